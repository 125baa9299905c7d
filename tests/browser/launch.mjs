// Headless Chromium for the browser tests: Debian's chromium (or REEF_CHROMIUM), with
// flags for a machine without a network beyond loopback (see the tool library's notes).
//
// `drive(steps, { trustKeys })` runs `steps({ browser, nextLine })`: `nextLine()` waits
// for the test's next line on stdin. A step that throws prints `failed: …` and exits
// non-zero; the browser is closed either way. Chromium accepts the certificates whose
// public keys are in `trustKeys` (see `servedKey`), and no others.
import crypto from "node:crypto";
import fs from "node:fs";
import readline from "node:readline";
import tls from "node:tls";
import { chromium } from "playwright-core";

// The key the server at `url` presents, once its chain has been verified against the
// CA in `caFile`, as Chromium's `--ignore-certificate-errors-spki-list` names keys
// (base64 SHA-256 of the SubjectPublicKeyInfo). Chromium cannot be handed a CA of its
// own without a certificate database; trusting this one key is as narrow.
export function servedKey(url, caFile) {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = tls.connect(
      { host: hostname, port: Number(port), servername: hostname, ca: fs.readFileSync(caFile) },
      () => {
        const leaf = new crypto.X509Certificate(socket.getPeerCertificate().raw);
        const spki = leaf.publicKey.export({ type: "spki", format: "der" });
        socket.end();
        resolve(crypto.createHash("sha256").update(spki).digest("base64"));
      },
    );
    socket.on("error", reject);
  });
}

export async function drive(steps, { trustKeys = [] } = {}) {
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
      ...(trustKeys.length ? [`--ignore-certificate-errors-spki-list=${trustKeys.join(",")}`] : []),
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
