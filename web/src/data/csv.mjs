/**
 * Python's `csv.reader` over `io.StringIO(text, newline="")`, as readers.py reads TSV and CSV files: the excel
 * dialect (`,`, `"` quoting with doubled quotes, not strict) or tabs without quoting (`QUOTE_NONE`). The rows,
 * the fields and the line number of each row are CPython's (a port of `_csv.c`'s state machine).
 */

const START_RECORD = 0;
const START_FIELD = 1;
const IN_FIELD = 2;
const IN_QUOTED_FIELD = 3;
const QUOTE_IN_QUOTED_FIELD = 4;
const EAT_CRNL = 5;
const EOL = null;

/** The lines of `text` with their breaks, as `io.StringIO(text, newline="")` yields them. */
function physicalLines(text) {
  return text.match(/[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$/g) ?? [];
}

/**
 * The rows of `text`, each with `lineNum`: the number of physical lines read when the row was complete
 * (`reader.line_num`). An empty line gives an empty row, as in Python.
 * @param {string} text
 * @param {{delimiter: string, quoting: boolean}} dialect `quoting: false` is `QUOTE_NONE`
 * @returns {Generator<{row: string[], lineNum: number}>}
 */
export function* readCsv(text, { delimiter, quoting }) {
  const parser = new Parser(delimiter, quoting);
  let lineNum = 0;
  for (const line of physicalLines(text)) {
    lineNum++;
    for (const c of line) parser.process(c);
    parser.process(EOL);
    if (parser.state === START_RECORD) yield { row: parser.takeRow(), lineNum };
  }
  if (parser.field.length || parser.state === IN_QUOTED_FIELD) {
    parser.saveField();
    yield { row: parser.takeRow(), lineNum };
  }
}

/** `_csv.c`'s `parse_process_char` for a dialect without escapechar or skipinitialspace. */
class Parser {
  constructor(delimiter, quoting) {
    this.delimiter = delimiter;
    this.quote = quoting ? '"' : undefined;
    this.state = START_RECORD;
    this.fields = [];
    this.field = '';
  }

  saveField() {
    this.fields.push(this.field);
    this.field = '';
  }

  takeRow() {
    const row = this.fields;
    this.fields = [];
    return row;
  }

  /** Save the field at a line break, then wait for the next line (or start a record at its end). */
  endLine(c) {
    this.saveField();
    this.state = c === EOL ? START_RECORD : EAT_CRNL;
  }

  process(c) {
    const newline = c === '\n' || c === '\r';
    switch (this.state) {
      case START_RECORD:
        if (c === EOL) return;
        if (newline) {
          this.state = EAT_CRNL;
          return;
        }
        this.state = START_FIELD;
        this.startField(c, newline);
        return;
      case START_FIELD:
        this.startField(c, newline);
        return;
      case IN_FIELD:
        if (newline || c === EOL) this.endLine(c);
        else if (c === this.delimiter) {
          this.saveField();
          this.state = START_FIELD;
        } else this.field += c;
        return;
      case IN_QUOTED_FIELD:
        if (c === EOL) return;
        if (c === this.quote) this.state = QUOTE_IN_QUOTED_FIELD;
        else this.field += c;
        return;
      case QUOTE_IN_QUOTED_FIELD:
        if (c === this.quote) {
          this.field += c;
          this.state = IN_QUOTED_FIELD;
        } else if (c === this.delimiter) {
          this.saveField();
          this.state = START_FIELD;
        } else if (newline || c === EOL) this.endLine(c);
        else {
          this.field += c;
          this.state = IN_FIELD;
        }
        return;
      case EAT_CRNL:
        if (c === EOL) this.state = START_RECORD;
        return;
    }
  }

  startField(c, newline) {
    if (newline || c === EOL) this.endLine(c);
    else if (c === this.quote) this.state = IN_QUOTED_FIELD;
    else if (c === this.delimiter) this.saveField();
    else {
      this.field += c;
      this.state = IN_FIELD;
    }
  }
}
