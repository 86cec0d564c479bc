/** Known camera intrinsics on the page: typed by the user in pixels of the camera's video frames, sent to the
 * server in pixels of the frames the page uploads (the session setting ``intrinsics``, OpenCV convention: pixel
 * centres at whole numbers). Without them the server estimates the focal from the stream's first frame. */

export type Intrinsics = [fx: number, fy: number, cx: number, cy: number];

/** ``"FX,FY,CX,CY"`` → the four numbers; null for an empty field; an Error saying what is wrong otherwise. */
export function parseIntrinsics(text: string): Intrinsics | null | Error {
  const trimmed = text.trim();
  if (trimmed === '') return null;
  const parts = trimmed.split(',').map((p) => p.trim());
  if (parts.length !== 4 || parts.some((p) => p === '')) return new Error(`camera intrinsics must be FX,FY,CX,CY (four numbers), got "${trimmed}"`);
  const k = parts.map(Number);
  if (!k.every(Number.isFinite)) return new Error(`camera intrinsics must be four numbers FX,FY,CX,CY, got "${trimmed}"`);
  if (k[0] <= 0 || k[1] <= 0) return new Error(`the focal lengths FX and FY must be positive, got "${trimmed}"`);
  return k as Intrinsics;
}

/** Intrinsics of a ``from``-sized frame → those of the same frame resized to ``to`` (a plain resize, as the page's
 * canvas draws it): pixel u of the source lands on (u + ½)·s − ½. */
export function resizedIntrinsics(k: Intrinsics, from: { width: number; height: number }, to: { width: number; height: number }): Intrinsics {
  const sx = to.width / from.width;
  const sy = to.height / from.height;
  return [k[0] * sx, k[1] * sy, (k[2] + 0.5) * sx - 0.5, (k[3] + 0.5) * sy - 0.5];
}
