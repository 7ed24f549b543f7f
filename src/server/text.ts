/**
 * A request's generated text as it comes: ids to text (never half a character), cut at the first stop string.
 * Text that might be the start of a stop string is held back until the next tokens tell, so a streamed answer
 * never shows a stop string, nor a piece of one, and equals the answer given whole.
 */
import { TextStreamer, type Tokenizer } from "../tokenizer.ts";

export class StopText {
  private readonly streamer: TextStreamer;
  private pending = "";
  /** the whole text emitted so far */
  text = "";
  stopped = false;

  constructor(tokenizer: Tokenizer, private readonly stops: readonly string[]) {
    this.streamer = new TextStreamer(tokenizer);
  }

  /** Adds one id; returns the text now safe to emit (possibly ""). After a stop string, returns "" forever. */
  push(id: number): string {
    if (this.stopped) return "";
    return this.take(this.streamer.push(id), false);
  }

  /** The rest, once generation ended. */
  flush(): string {
    if (this.stopped) return "";
    return this.take(this.streamer.flush(), true);
  }

  private take(piece: string, end: boolean): string {
    this.pending += piece;
    let cut = -1;
    for (const s of this.stops) {
      const i = this.pending.indexOf(s);
      if (i >= 0 && (cut < 0 || i < cut)) cut = i;
    }
    let out: string;
    if (cut >= 0) {
      out = this.pending.slice(0, cut);
      this.pending = "";
      this.stopped = true;
    } else if (end) {
      out = this.pending;
      this.pending = "";
    } else {
      // hold back the longest tail that begins a stop string
      let hold = 0;
      for (const s of this.stops) {
        for (let k = Math.min(s.length - 1, this.pending.length); k > hold; k--) {
          if (this.pending.endsWith(s.slice(0, k))) { hold = k; break; }
        }
      }
      out = this.pending.slice(0, this.pending.length - hold);
      this.pending = this.pending.slice(this.pending.length - hold);
    }
    this.text += out;
    return out;
  }
}
