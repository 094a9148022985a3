/**
 * Python's string semantics where the data loaders depend on them: `str.strip`, `str.splitlines`, sorting by code
 * point, and `str()` / `repr()` of the values a JSON line can hold. (JavaScript's `trim`, default sort and
 * `String` differ from Python's on a few characters and values.)
 */

/** Python's whitespace (`str.isspace`): what `str.strip()` removes and `str.split()` splits on. */
const SPACE = '\\t\\n\\x0b\\x0c\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000';
const STRIP = new RegExp(`^[${SPACE}]+|[${SPACE}]+$`, 'g');
/** The line boundaries of `str.splitlines` (\r\n counts as one). */
const LINE_BREAK = /\r\n|[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]/;

/**
 * `s.strip()`.
 * @param {string} s
 */
export function pyStrip(s) {
  return s.replace(STRIP, '');
}

/**
 * `s.splitlines()`: the lines without their breaks, no empty last line for a trailing break.
 * @param {string} s
 * @returns {string[]}
 */
export function pySplitLines(s) {
  const lines = s.split(LINE_BREAK);
  if (lines.length && lines[lines.length - 1] === '') lines.pop();
  return lines;
}

/**
 * Compare two strings by code point, as Python's `<` on str (JavaScript's default sort compares UTF-16 units).
 * @param {string} a
 * @param {string} b
 */
export function compareCodePoints(a, b) {
  const x = [...a];
  const y = [...b];
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    if (x[i] !== y[i]) return x[i].codePointAt(0) - y[i].codePointAt(0);
  }
  return x.length - y.length;
}

/**
 * `str(value)` of a value parsed from JSON (strings as they are, True/False/None, integers; other numbers,
 * arrays and objects as JSON, which is close to but not always Python's text).
 * @param {unknown} value
 */
export function pyStr(value) {
  if (typeof value === 'string') return value;
  if (value === true) return 'True';
  if (value === false) return 'False';
  if (value === null || value === undefined) return 'None';
  return typeof value === 'number' ? String(value) : JSON.stringify(value);
}

/**
 * `repr(value)` for error messages: strings quoted as Python quotes them, lists as Python lists.
 * @param {unknown} value
 */
export function pyRepr(value) {
  if (Array.isArray(value)) return `[${value.map(pyRepr).join(', ')}]`;
  if (typeof value !== 'string') return pyStr(value);
  const quote = value.includes("'") && !value.includes('"') ? '"' : "'";
  const escaped = value.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/\r/g, '\\r').replace(/\t/g, '\\t');
  return quote + (quote === "'" ? escaped.replace(/'/g, "\\'") : escaped) + quote;
}
