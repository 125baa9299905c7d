// Two people chat in headless Chromium through reef-gateway and the chat container,
// and go on chatting while the test kills the container.
//
//   node chat.mjs URL SCREENSHOT
//
// Prints `exchanged` once the first messages went both ways, then waits for a line
// on stdin (the test writes `killed` after it killed the chat container), then prints
// `carried-on` once messages sent since arrived and a newcomer saw the history.
import { drive } from "./launch.mjs";

const [url, screenshot] = process.argv.slice(2);

async function join(browser, name) {
  const page = await browser.newPage();
  await page.goto(url);
  await page.fill("#name", name);
  await page.waitForSelector("#status.connected");
  return page;
}

async function say(page, text) {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
}

async function sees(page, line) {
  await page.locator("#log li", { hasText: line }).first().waitFor({ timeout: 20000 });
}

await drive(async ({ browser, nextLine }) => {
  const ada = await join(browser, "ada");
  const bob = await join(browser, "bob");
  await say(ada, "hello bob");
  await sees(bob, "ada: hello bob");
  await say(bob, "hi ada");
  await sees(ada, "bob: hi ada");
  console.log("exchanged");

  await nextLine();
  // The chat container is dead or restarting: these wait in the node for its next life.
  await say(bob, "are you still there?");
  await say(ada, "yes, still here");
  await sees(ada, "bob: are you still there?");
  await sees(bob, "ada: yes, still here");
  // A newcomer gets the history the container keeps in the node's state.
  const cy = await join(browser, "cy");
  await sees(cy, "ada: hello bob");
  await sees(cy, "ada: yes, still here");
  await ada.screenshot({ path: screenshot });
  console.log("carried-on");
});
