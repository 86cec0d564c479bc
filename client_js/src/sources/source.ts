import type { EncodedFrame } from './frameEncoder.ts';

/** Where a source delivers frames. The session decides whether there is room for another one in flight. */
export interface FrameSink {
  /** true when a frame sent now would not exceed the in-flight limit */
  ready(): boolean;
  push(frame: EncodedFrame): void;
  /** a live source skipped a frame because the pipeline was full */
  skipped(): void;
}

export interface FrameSource {
  readonly kind: 'camera' | 'replay';
  readonly label: string;
  start(sink: FrameSink): Promise<void>;
  stop(): void;
  /** called once when a finite source (a file) has delivered everything */
  onEnded: () => void;
  /** progress of finite sources, 0..1 */
  progress(): number | null;
}
