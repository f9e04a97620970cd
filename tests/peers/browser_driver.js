// A real WIC with real WebRTC: Debian's headless Chromium driven by playwright-core.
//
//   node browser_driver.js USER_DATA_DIR            commands as JSON lines on stdin
//   node browser_driver.js USER_DATA_DIR STEPS.json a JSON list of commands, run in order
//
// Every command is an object {id, op, ...}; the driver answers each with one JSON line
// {"event": "done", id, op, result} or {"event": "failed", id, op, error} and runs the
// commands strictly one after another.  It also prints, unprompted:
//   {"event": "ready", chromium}                         the browser is up
//   {"event": "console", page, type, text}               the page's console
//   {"event": "pageerror", page, message}                an uncaught exception in a page
//   {"event": "closed", page}                            a page closed
//   {"event": "exit"}                                    the browser closed, the driver ends
//
// Commands (page: a name of the caller's choice, e.g. "alice"; timeout in ms):
//   open {page, url}                       new tab, load url (waits for "load")
//   fill {page, selector, value}           type into an input (replacing its value)
//   select {page, selector, value}         choose an <option>
//   click {page, selector}                 click (a real user gesture: autoplay is allowed)
//   wait {page, selector, state?, timeout?}         until the element is attached/visible/...
//   wait_function {page, expression, arg?, timeout?, polling?}
//                                          until the expression (or function of arg) is truthy;
//                                          result: its value
//   evaluate {page, expression, arg?}      result: the value (JSON) of the expression/function
//   text {page, selector}                  result: the element's textContent
//   attribute {page, selector, name}       result: the attribute's value
//   screenshot {page, path, full_page?}    PNG at path; result: {path, bytes}
//   close {page}
//   sleep {ms}
//   quit                                   close the browser and exit 0
//
// Chromium is always /usr/bin/chromium (never a downloaded browser), with a fresh profile
// in USER_DATA_DIR and the flags a loopback-only WebRTC test needs (see
// /work/shared/notes/testing.md): fake microphone (a beeping tone) and camera, media
// permission granted, host candidates on 127.0.0.1, no mDNS names.
'use strict';
const fs = require('fs');
const readline = require('readline');
const { chromium } = require('playwright-core');

const CHROMIUM = process.env.EPCSCF_CHROMIUM || '/usr/bin/chromium';
const CHROMIUM_FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
  '--allow-loopback-in-peer-connection',
  '--disable-features=WebRtcHideLocalIpsWithMdns',
];
// More flags from the test, space-separated (e.g. --ignore-certificate-errors-spki-list=… to
// trust a test certificate for an https page and wss).
const EXTRA_FLAGS = (process.env.EPCSCF_CHROMIUM_EXTRA_FLAGS || '').split(/\s+/).filter(Boolean);
const DEFAULT_TIMEOUT = 15000;

const [userDataDir, stepsFile] = process.argv.slice(2);
const say = (event, extra = {}) => process.stdout.write(JSON.stringify({ event, ...extra }) + '\n');

if (!userDataDir) {
  say('failed', { error: 'usage: node browser_driver.js USER_DATA_DIR [STEPS.json]' });
  process.exit(2);
}

const pages = new Map();

// A function's source ("(arg) => ...", "async () => ...", "function (x) {...}") becomes a
// function (playwright sends its source to the page and calls it with arg); any other text
// is evaluated in the page as an expression.  Building the function evaluates nothing.
const FUNCTION_SOURCE = /^\s*(async\s+)?(function\b|\([^)]*\)\s*=>|[A-Za-z_$][\w$]*\s*=>)/;
function pageFunction(expression) {
  if (!FUNCTION_SOURCE.test(expression)) return expression;
  return new Function(`return (${expression});`)();
}
let context = null;

function pageNamed(name) {
  const page = pages.get(name);
  if (!page) throw new Error(`no open page named ${JSON.stringify(name)} (open it first)`);
  return page;
}

function required(command, ...keys) {
  for (const key of keys) {
    if (command[key] === undefined) throw new Error(`${command.op} needs ${key}`);
  }
}

const operations = {
  async open(c) {
    required(c, 'page', 'url');
    if (pages.has(c.page)) throw new Error(`a page named ${c.page} is already open`);
    const page = await context.newPage();
    pages.set(c.page, page);
    page.on('console', (message) => say('console', { page: c.page, type: message.type(), text: message.text() }));
    page.on('pageerror', (error) => say('pageerror', { page: c.page, message: String(error && error.stack || error) }));
    page.on('close', () => { pages.delete(c.page); say('closed', { page: c.page }); });
    const response = await page.goto(c.url, { waitUntil: 'load', timeout: c.timeout || DEFAULT_TIMEOUT });
    return { status: response ? response.status() : null, url: page.url() };
  },
  async fill(c) {
    required(c, 'page', 'selector', 'value');
    await pageNamed(c.page).fill(c.selector, String(c.value), { timeout: c.timeout || DEFAULT_TIMEOUT });
    return null;
  },
  async select(c) {
    required(c, 'page', 'selector', 'value');
    return pageNamed(c.page).selectOption(c.selector, String(c.value), { timeout: c.timeout || DEFAULT_TIMEOUT });
  },
  async click(c) {
    required(c, 'page', 'selector');
    await pageNamed(c.page).click(c.selector, { timeout: c.timeout || DEFAULT_TIMEOUT });
    return null;
  },
  async wait(c) {
    required(c, 'page', 'selector');
    await pageNamed(c.page).waitForSelector(c.selector, { state: c.state || 'visible', timeout: c.timeout || DEFAULT_TIMEOUT });
    return null;
  },
  async wait_function(c) {
    required(c, 'page', 'expression');
    // Polled from here with evaluate(), so that an async predicate's result is the value its
    // promise resolved to: under load page.waitForFunction() sometimes handed back `true`
    // instead of the getStats() summary the predicate returned.
    const page = pageNamed(c.page);
    const timeout = c.timeout || DEFAULT_TIMEOUT;
    const interval = typeof c.polling === 'number' ? c.polling : 100;
    const deadline = Date.now() + timeout;
    for (;;) {
      const value = await page.evaluate(pageFunction(c.expression), c.arg);
      if (value) return value;
      if (Date.now() >= deadline) throw new Error(`wait_function: timeout ${timeout}ms exceeded`);
      await new Promise((resolve) => setTimeout(resolve, interval));
    }
  },
  async evaluate(c) {
    required(c, 'page', 'expression');
    return pageNamed(c.page).evaluate(pageFunction(c.expression), c.arg);
  },
  async text(c) {
    required(c, 'page', 'selector');
    return pageNamed(c.page).textContent(c.selector, { timeout: c.timeout || DEFAULT_TIMEOUT });
  },
  async attribute(c) {
    required(c, 'page', 'selector', 'name');
    return pageNamed(c.page).getAttribute(c.selector, c.name, { timeout: c.timeout || DEFAULT_TIMEOUT });
  },
  async screenshot(c) {
    required(c, 'page', 'path');
    const bytes = await pageNamed(c.page).screenshot({ path: c.path, fullPage: Boolean(c.full_page) });
    return { path: c.path, bytes: bytes.length };
  },
  async close(c) {
    required(c, 'page');
    await pageNamed(c.page).close();
    return null;
  },
  async sleep(c) {
    await new Promise((resolve) => setTimeout(resolve, Number(c.ms) || 0));
    return null;
  },
};

// One command → one answer line; 'quit', 'done' or 'failed'.
async function run(command) {
  const { id = null, op } = command;
  if (op === 'quit') return 'quit';
  try {
    const operation = Object.prototype.hasOwnProperty.call(operations, op) ? operations[op] : null;
    if (!operation) throw new Error(`unknown op ${JSON.stringify(op)} (known: ${Object.keys(operations).join(', ')}, quit)`);
    const result = await operation(command);
    say('done', { id, op, result: result === undefined ? null : result });
    return 'done';
  } catch (error) {
    say('failed', { id, op, error: String(error && error.message || error) });
    return 'failed';
  }
}

async function* commandsFrom() {
  if (stepsFile) {
    const steps = JSON.parse(fs.readFileSync(stepsFile, 'utf8'));
    if (!Array.isArray(steps)) throw new Error(`${stepsFile} is not a JSON list of commands`);
    yield* steps;
    return;
  }
  for await (const line of readline.createInterface({ input: process.stdin })) {
    if (!line.trim()) continue;
    try {
      yield JSON.parse(line);
    } catch (error) {
      say('failed', { id: null, op: null, error: `not a JSON command: ${line.slice(0, 200)}` });
    }
  }
}

async function main() {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: [...CHROMIUM_FLAGS, ...EXTRA_FLAGS],
    viewport: { width: 900, height: 900 },
  });
  say('ready', { chromium: context.browser() ? context.browser().version() : null });
  let failed = false;
  for await (const command of commandsFrom()) {
    const outcome = await run(command);
    if (outcome === 'quit') break;
    // A steps file stops at the first failure; interactive callers decide for themselves.
    if (outcome === 'failed' && stepsFile) { failed = true; break; }
  }
  await context.close();
  say('exit');
  process.exit(failed ? 1 : 0);
}

main().catch((error) => {
  say('failed', { id: null, op: 'launch', error: String(error && error.message || error) });
  process.exit(2);
});
