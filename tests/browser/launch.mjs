// Headless Chromium for the browser tests: Debian's chromium (or REEF_CHROMIUM), with
// flags for a machine without a network beyond loopback (see the tool library's notes).
//
// `drive(steps)` runs `steps({ browser, nextLine })`: `nextLine()` waits for the test's
// next line on stdin. A step that throws prints `failed: …` and exits non-zero; the
// browser is closed either way.
import readline from "node:readline";
import { chromium } from "playwright-core";

export async function drive(steps) {
  const stdin = readline.createInterface({ input: process.stdin });
  const nextLine = () => new Promise((resolve) => stdin.once("line", resolve));
  const browser = await chromium.launch({
    executablePath: process.env.REEF_CHROMIUM || "/usr/bin/chromium",
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  try {
    await steps({ browser, nextLine });
  } catch (error) {
    console.log(`failed: ${error.message}`);
    process.exitCode = 1;
  } finally {
    await browser.close();
    stdin.close();
  }
}
