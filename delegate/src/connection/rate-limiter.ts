/** Token bucket for frames per second: bursts up to one second's worth, then a steady rate. */
export class RateLimiter {
  private tokens: number;
  private last: number;

  constructor(private perSecond: number, private readonly now: () => number = () => performance.now()) {
    this.tokens = perSecond;
    this.last = now();
  }

  setRate(perSecond: number): void {
    this.perSecond = Math.max(1, perSecond);
    this.tokens = Math.min(this.tokens, this.perSecond);
  }

  private refill(): void {
    const t = this.now();
    this.tokens = Math.min(this.perSecond, this.tokens + ((t - this.last) / 1000) * this.perSecond);
    this.last = t;
  }

  /** Takes a token if one is there; else returns the wait in ms until one is. */
  take(): number {
    this.refill();
    if (this.tokens >= 1) {
      this.tokens -= 1;
      return 0;
    }
    return Math.max(1, Math.ceil(((1 - this.tokens) / this.perSecond) * 1000));
  }
}
