import Foundation

/// A short fingerprint of a frozen backbone: the architecture and the values of every backbone
/// tensor (LayerScale folded, as loaded), the position table excepted because it is resized to
/// the image size in use. An adapter records the fingerprint of the base it was trained on, so
/// that applying it to another base (an already merged one included) is refused instead of
/// silently giving wrong answers. An export of the same base in another naming (HF ViT form of a
/// DINOv2 base) has the same fingerprint.
///
/// A 64-bit multiply-xorshift hash over the fp32 bit patterns in four independent lanes: it
/// catches a wrong base, not an adversary, and hashes ViT-B/16's 86 M values in well under a
/// second where SHA-256 in Swift would take several.
public enum BaseFingerprint {
    public static func of(_ values: [String: [Float]], config: ViTConfig) -> String {
        of(config) { values[$0] }
    }

    /// The same fingerprint from tensors as stored (widened one at a time: the same values).
    public static func of(_ tensors: [String: HostTensor], config: ViTConfig) -> String {
        of(config) { tensors[$0]?.floats }
    }

    private static func of(_ config: ViTConfig, values: (String) -> [Float]?) -> String {
        var lanes: [UInt64] = [0x243F_6A88_85A3_08D3, 0x1319_8A2E_0370_7344, 0xA409_3822_299F_31D0, 0x082E_FA98_EC4E_6C89]
        func mix(_ lane: Int, _ word: UInt64) {
            var x = (lanes[lane] ^ word) &* 0x9E37_79B9_7F4A_7C15
            x ^= x >> 29
            lanes[lane] = x
        }
        for field in [config.patchSize, config.channels, config.width, config.layers, config.heads, config.mlpWidth] { mix(0, UInt64(field)) }
        mix(1, UInt64(config.layerNormEpsilon.bitPattern))
        // ViT fingerprints predate families and stay as they were.
        if config.architecture != .vit {
            for byte in "\(config.architecture.family.rawValue) \(config.architecture.activation.rawValue) \(config.architecture.pooling.rawValue) \(config.architecture.projection ?? 0)".utf8 {
                mix(1, UInt64(byte))
            }
        }
        for spec in ParameterTable.specs(config, .probe) where spec.role == .backbone && spec.name != "pos" {
            for byte in spec.name.utf8 { mix(2, UInt64(byte)) }
            guard let tensor = values(spec.name) else { mix(3, 0xDEAD); continue }
            mix(3, UInt64(tensor.count))
            tensor.withUnsafeBufferPointer { buffer in
                buffer.withMemoryRebound(to: UInt32.self) { words in
                    var index = 0
                    while index + 8 <= words.count {
                        for lane in 0..<4 { mix(lane, UInt64(words[index + 2 * lane]) << 32 | UInt64(words[index + 2 * lane + 1])) }
                        index += 8
                    }
                    while index < words.count {
                        mix(index % 4, UInt64(words[index]))
                        index += 1
                    }
                }
            }
        }
        var result: UInt64 = 0
        for lane in lanes {
            result = (result ^ lane) &* 0xFF51_AFD7_ED55_8CCD
            result ^= result >> 33
        }
        let hex = String(result, radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex
    }
}
