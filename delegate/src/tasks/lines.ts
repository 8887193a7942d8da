/** Splits a byte stream into lines (UTF-8 safe across chunk boundaries). */
import { StringDecoder } from 'node:string_decoder';

export class LineSplitter {
  private readonly decoder = new StringDecoder('utf8');
  private partial = '';

  constructor(private readonly onLine: (line: string) => void, private readonly maxChars = 1 << 20) {}

  push(buf: Buffer | string): void {
    const text = this.partial + (typeof buf === 'string' ? buf : this.decoder.write(buf));
    let start = 0;
    for (;;) {
      const nl = text.indexOf('\n', start);
      if (nl < 0) break;
      this.emit(text.slice(start, nl));
      start = nl + 1;
    }
    this.partial = start === 0 ? text : text.slice(start);
    // A line without an end that grows past the limit goes out in pieces.
    while (this.partial.length > this.maxChars) {
      this.onLine(this.partial.slice(0, this.maxChars));
      this.partial = this.partial.slice(this.maxChars);
    }
  }

  /** The last line, if the stream did not end with a newline. */
  end(): void {
    const rest = this.partial + this.decoder.end();
    this.partial = '';
    if (rest.length > 0) this.emit(rest);
  }

  private emit(line: string): void {
    this.onLine(line.endsWith('\r') ? line.slice(0, -1) : line);
  }
}
