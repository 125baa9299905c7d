// Headless Chromium for the browser tests: Debian's chromium (or REEF_CHROMIUM), with
// flags for a machine without a network beyond loopback (see the tool library's notes).
import { chromium } from "playwright-core";

export function launch() {
  return chromium.launch({
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
}
