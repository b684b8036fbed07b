/// uint8 HWC images -> normalised float CHW at the model's resolution, optionally augmented.
/// Shapes: output [B, 3, S, S] row-major.
///
/// Steps (the PyTorch preparation in scripts/make_dinov2_fixture.py, plus augmentation):
/// 1. augmentation at the source resolution (training only): random crop with zero padding
///    (pad = max(1, source / 10) pixels each side) and horizontal flip with probability 1/2;
/// 2. bilinear resize to S x S with PyTorch's semantics (align_corners False, no antialiasing):
///    source coordinate (o + 0.5) * in / out - 0.5, clamped below at 0;
/// 3. grey replicated to three channels; (x / 255 - mean[c]) / std[c].
public struct Preprocessor: Sendable {
    public let outputSize: Int
    public let mean: [Float]
    public let std: [Float]

    public init(outputSize: Int, mean: [Float], std: [Float]) {
        (self.outputSize, self.mean, self.std) = (outputSize, mean, std)
    }

    /// Values for one image into `output` (3 * S * S floats starting at `offset`).
    /// `random` supplies augmentation choices; nil means no augmentation.
    public func prepare(_ dataset: ImageDataset, index: Int, augmentation random: UInt64?, into output: inout [Float], offset: Int) {
        let (height, width, channels) = (dataset.height, dataset.width, dataset.channels)
        let source = dataset.image(index)
        let base = source.startIndex
        // Augmentation as an index map: output pixel (y, x) of the augmented source image reads
        // source pixel (y + dy, x + dx), mirrored when flipped; outside is zero padding.
        var (dy, dx, flip) = (0, 0, false)
        if let random {
            let pad = max(1, min(height, width) / 10)
            dy = Int(random % UInt64(2 * pad + 1)) - pad
            dx = Int((random >> 16) % UInt64(2 * pad + 1)) - pad
            flip = (random >> 32) & 1 == 1
        }
        @inline(__always) func pixel(_ y: Int, _ x: Int, _ c: Int) -> Float {
            let sourceX = flip ? width - 1 - x : x
            let sy = y + dy, sx = sourceX + dx
            guard sy >= 0, sy < height, sx >= 0, sx < width else { return 0 }
            return Float(source[base + (sy * width + sx) * channels + c])
        }
        let size = outputSize
        let scaleY = Float(height) / Float(size), scaleX = Float(width) / Float(size)
        for c in 0..<3 {
            let sourceChannel = channels == 1 ? 0 : c
            let plane = offset + c * size * size
            for oy in 0..<size {
                let fy = max(0, (Float(oy) + 0.5) * scaleY - 0.5)
                let y0 = min(Int(fy), height - 1), y1 = min(y0 + 1, height - 1)
                let ly = fy - Float(y0)
                for ox in 0..<size {
                    let fx = max(0, (Float(ox) + 0.5) * scaleX - 0.5)
                    let x0 = min(Int(fx), width - 1), x1 = min(x0 + 1, width - 1)
                    let lx = fx - Float(x0)
                    let top = (1 - lx) * pixel(y0, x0, sourceChannel) + lx * pixel(y0, x1, sourceChannel)
                    let bottom = (1 - lx) * pixel(y1, x0, sourceChannel) + lx * pixel(y1, x1, sourceChannel)
                    let value = ((1 - ly) * top + ly * bottom) / 255
                    output[plane + oy * size + ox] = (value - mean[c]) / std[c]
                }
            }
        }
    }
}
