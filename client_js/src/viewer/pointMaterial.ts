/**
 * Shader for the cloud. The confidence threshold and the colour mode are uniforms, so moving the slider or
 * switching the colouring never touches the (possibly millions of) stored points.
 */
import { ShaderMaterial, Vector2 } from 'three';

export const COLOR_MODES = ['rgb', 'confidence', 'depth'] as const;
export type ColorMode = (typeof COLOR_MODES)[number];

const vertexShader = /* glsl */ `
uniform float confThreshold;
uniform int colorMode;
uniform float pointSize;
uniform vec2 confRange;
uniform vec2 depthRange;
uniform float pixelRatio;
attribute float confidence;
attribute vec3 color;
varying vec3 vColor;

// Turbo colormap, polynomial fit (Mikhailov, Google 2019): readable on dark backgrounds, perceptually ordered.
vec3 turbo(float x) {
  x = clamp(x, 0.0, 1.0);
  vec4 v4 = vec4(1.0, x, x * x, x * x * x);
  vec2 v2 = v4.zw * v4.z;
  return vec3(
    dot(v4, vec4(0.13572138, 4.61539260, -42.66032258, 132.13108234)) + dot(v2, vec2(-152.94239396, 59.28637943)),
    dot(v4, vec4(0.09140261, 2.19418839, 4.84296658, -14.18503333)) + dot(v2, vec2(4.27729857, 2.82956604)),
    dot(v4, vec4(0.10667330, 12.64194608, -60.58204836, 110.36276771)) + dot(v2, vec2(-89.90310912, 27.34824973))
  );
}

void main() {
  vec4 mvPosition = modelViewMatrix * vec4(position, 1.0);
  if (confidence < confThreshold || confidence <= 0.0) {
    // unused slot space has confidence 0; moved outside the clip volume: the point is culled before rasterisation
    gl_Position = vec4(2.0, 2.0, 2.0, 1.0);
    gl_PointSize = 0.0;
    return;
  }
  if (colorMode == 1) {
    vColor = turbo((log(confidence) - log(confRange.x)) / max(1e-6, log(confRange.y) - log(confRange.x)));
  } else if (colorMode == 2) {
    vColor = turbo(1.0 - (-mvPosition.z - depthRange.x) / max(1e-6, depthRange.y - depthRange.x));
  } else {
    vColor = color;
  }
  gl_Position = projectionMatrix * mvPosition;
  // size in world units → pixels, clamped so close points do not become huge squares
  gl_PointSize = clamp(pointSize * pixelRatio * 300.0 / max(-mvPosition.z, 1e-3), 1.0, 8.0 * pixelRatio);
}
`;

const fragmentShader = /* glsl */ `
varying vec3 vColor;
void main() {
  gl_FragColor = vec4(vColor, 1.0);
}
`;

export function createPointMaterial(): ShaderMaterial {
  return new ShaderMaterial({
    uniforms: {
      confThreshold: { value: 0 },
      colorMode: { value: 0 },
      pointSize: { value: 0.01 },
      confRange: { value: new Vector2(1, 2) },
      depthRange: { value: new Vector2(0, 1) },
      pixelRatio: { value: 1 },
    },
    vertexShader,
    fragmentShader,
  });
}

export function colorModeIndex(mode: ColorMode): number {
  return COLOR_MODES.indexOf(mode);
}
