// Drives rnmt serve's web page in headless Chromium (Debian's `chromium`) through
// playwright-core. Run by tests/serve_web.rs:
//   node page.mjs URL GERMAN ENGLISH GERMAN_BACK CHAR_LIMIT [SCREENSHOT.png]
// GERMAN must translate to ENGLISH, and ENGLISH back to GERMAN_BACK.
import { chromium } from "playwright-core";

const [url, german, english, germanBack, charLimit, screenshot] = process.argv.slice(2);
const timeout = 30000;

function check(condition, message) {
  if (!condition) throw new Error(message);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  timeout,
});
try {
  const page = await browser.newPage({ viewport: { width: 1000, height: 640 } });
  page.setDefaultTimeout(timeout);
  const failed = [];
  page.on("requestfailed", (r) => failed.push(r.url()));
  await page.goto(url);
  await page.waitForSelector("body[data-ready=true]");

  // The pickers come from /languages and /frontend/settings.
  await page.getByLabel("From", { exact: true }).selectOption("de");
  await page.getByLabel("To", { exact: true }).selectOption("en");
  const input = page.getByLabel("Text to translate", { exact: true });
  const output = page.getByLabel("Translation", { exact: true });
  // Typed key by key: translation starts when typing pauses (frontendTimeout).
  await input.pressSequentially(german, { delay: 5 });
  await page.waitForFunction(
    (want) => document.getElementById("output").value === want,
    english
  );
  check((await page.locator("#counter").textContent()) === `${[...german].length} / ${charLimit}`,
    "the character counter shows the length against the limit");
  check(await page.locator("#error").isHidden(), "no error after a good translation");
  await page.locator("#alternatives-box").waitFor({ state: "visible" });
  check((await page.locator("#alternatives li").count()) > 0, "alternatives for one sentence");
  // The attention heatmap of the sentence: one row per target subword.
  await page.locator("#attention-box summary").click();
  await page.locator("#heatmap tbody tr").first().waitFor();
  check((await page.locator("#heatmap tbody tr").count()) >= 2, "a heatmap row per target subword");
  check((await page.locator("#heatmap thead th").count()) >= 3, "a heatmap column per source subword");
  if (screenshot) {
    await page.setViewportSize({ width: 1000, height: 1040 });
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: screenshot });
    await page.setViewportSize({ width: 1000, height: 640 });
  }
  await page.locator("#attention-box summary").click();

  // Swap: the languages turn round and the translation becomes the input.
  await page.getByRole("button", { name: "Swap languages" }).click();
  check((await page.getByLabel("From", { exact: true }).inputValue()) === "en", "swap sets the source to en");
  check((await page.getByLabel("To", { exact: true }).inputValue()) === "de", "swap sets the target to de");
  check((await input.inputValue()) === english, "swap moves the translation into the input");
  await page.waitForFunction(
    (want) => document.getElementById("output").value === want,
    germanBack
  );
  check((await output.inputValue()) === germanBack, "en→de translation after the swap");

  // Over the limit: the API's error is shown and the counter says so.
  await input.fill("a".repeat(Number(charLimit) + 1));
  const error = page.getByRole("alert");
  await error.waitFor({ state: "visible" });
  const text = await error.textContent();
  check(text.includes(`exceeds text limit (${charLimit})`), `the limit error is shown: ${text}`);
  check(await page.locator("#counter.over").isVisible(), "the counter marks the excess");

  // Phone width: nothing wider than the screen.
  await page.setViewportSize({ width: 375, height: 740 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 0, `no horizontal scrolling at phone width (${overflow}px too wide)`);
  // Keyboard: the controls are reachable with Tab.
  await page.getByLabel("From", { exact: true }).focus();
  await page.keyboard.press("Tab");
  check(await page.evaluate(() => document.activeElement.id === "swap"), "Tab reaches the swap button");

  check(failed.length === 0, `requests failed: ${failed.join(", ")}`);
  console.log("web page: ok");
} finally {
  await browser.close();
}
