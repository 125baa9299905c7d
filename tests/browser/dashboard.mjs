// An operator uses the dashboard in headless Chromium: logs in, watches the tree, sees
// a killed container's restart count rise, restarts a container from the page, and
// watches a state namespace receive a put.
//
//   node dashboard.mjs URL TOKEN SCREENSHOT CA
//
// The page is trusted as served with a key the node's CA (the file CA) vouches for.
//
// Prints a line per step; between some it waits for a line on stdin from the test:
//   tree restarts=N   the demo's tree is shown (N: echo's restarts)   ← `killed`
//   restart-seen      echo's restart count rose on the page
//   restarted         a restart asked from the page came back as an event
//   state-open        namespace `dash` is open and watched           ← `put`
//   state-live        the put arrived without a reload
//   done              the screenshot is saved
import { drive, servedKey } from "./launch.mjs";

const [url, token, screenshot, ca] = process.argv.slice(2);
const STEP = { timeout: 30000 };

const trustKeys = [await servedKey(url, ca)];
await drive(async ({ browser, nextLine }) => {
  const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
  const page = await context.newPage();
  await page.goto(url);

  // A wrong token is refused; the right one logs in.
  await page.fill("#token", "not-the-token");
  await page.click("#login-button");
  await page.waitForSelector("#login-failed:not([hidden])", STEP);
  await page.fill("#token", token);
  await page.click("#login-button");
  const echo = page.locator('#tree tr[data-alias="echo"]');
  await echo.waitFor(STEP);
  const restarts = Number(await echo.locator("td.restarts").textContent());
  console.log(`tree restarts=${restarts}`);

  await nextLine();
  await page.waitForFunction(
    (before) => {
      const cell = document.querySelector('#tree tr[data-alias="echo"] td.restarts');
      return cell && Number(cell.textContent) > before;
    },
    restarts,
    STEP,
  );
  console.log("restart-seen");

  await echo.locator('button[data-action="restart"]').click();
  await page.click("#confirm-yes");
  await page.locator("#events li", { hasText: "restart requested" }).first().waitFor(STEP);
  console.log("restarted");

  await page.fill("#state-ns", "dash");
  await page.click("#state-open");
  await page.locator("#state-status", { hasText: "watching" }).waitFor(STEP);
  console.log("state-open");
  await nextLine();
  await page.locator('#state-table tr[data-key="greeting"]', { hasText: "hello" }).waitFor(STEP);
  console.log("state-live");

  // A container's detail: its events, policy and log tail.
  await echo.click();
  await page.locator("#detail-alias", { hasText: "echo" }).waitFor(STEP);
  await page.locator("#detail-events li").first().waitFor(STEP);
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log("done");
}, { trustKeys });
