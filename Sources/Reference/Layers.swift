import Foundation

// Reference layers: forward definitions in Double, and backward formulas written the slow,
// direct way (full softmax matrices, explicit sums). Shapes as in the kernels.
extension Reference {
    /// x [R, D] -> (y [R, D], mean [R], rstd [R]).
    public static func layerNorm(_ x: [Double], gamma: [Double], beta: [Double], rows: Int, width: Int, eps: Double)
        -> (y: [Double], mean: [Double], rstd: [Double]) {
        var y = [Double](repeating: 0, count: rows * width), means: [Double] = [], rstds: [Double] = []
        for r in 0..<rows {
            let row = x[r * width..<(r + 1) * width]
            let mean = row.reduce(0, +) / Double(width)
            let variance = row.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(width)
            let rstd = 1 / (variance + eps).squareRoot()
            for i in 0..<width { y[r * width + i] = (x[r * width + i] - mean) * rstd * gamma[i] + beta[i] }
            means.append(mean)
            rstds.append(rstd)
        }
        return (y, means, rstds)
    }

    /// (dx, dgamma, dbeta) for dy.
    public static func layerNormBackward(_ dy: [Double], x: [Double], gamma: [Double], rows: Int, width: Int, eps: Double)
        -> (dx: [Double], dgamma: [Double], dbeta: [Double]) {
        let (_, means, rstds) = layerNorm(x, gamma: gamma, beta: [Double](repeating: 0, count: width), rows: rows, width: width, eps: eps)
        var dx = [Double](repeating: 0, count: rows * width)
        var dgamma = [Double](repeating: 0, count: width), dbeta = [Double](repeating: 0, count: width)
        for r in 0..<rows {
            let xhat = (0..<width).map { (x[r * width + $0] - means[r]) * rstds[r] }
            let g = (0..<width).map { dy[r * width + $0] * gamma[$0] }
            let gMean = g.reduce(0, +) / Double(width)
            let gxMean = zip(g, xhat).reduce(0) { $0 + $1.0 * $1.1 } / Double(width)
            for i in 0..<width {
                dx[r * width + i] = rstds[r] * (g[i] - gMean - xhat[i] * gxMean)
                dgamma[i] += dy[r * width + i] * xhat[i]
                dbeta[i] += dy[r * width + i]
            }
        }
        return (dx, dgamma, dbeta)
    }

    /// Per-row losses and dlogits of the mean loss.
    public static func softmaxCrossEntropy(_ logits: [Double], labels: [Int], classes: Int, smoothing: Double)
        -> (losses: [Double], dlogits: [Double]) {
        let batch = labels.count
        var losses: [Double] = [], dlogits = [Double](repeating: 0, count: logits.count)
        for b in 0..<batch {
            let z = Array(logits[b * classes..<(b + 1) * classes])
            let maximum = z.max()!
            let lse = maximum + log(z.reduce(0) { $0 + exp($1 - maximum) })
            var loss = 0.0
            for c in 0..<classes {
                let target = (c == labels[b] ? 1 - smoothing : 0) + smoothing / Double(classes)
                loss -= target * (z[c] - lse)
                dlogits[b * classes + c] = (exp(z[c] - lse) - target) / Double(batch)
            }
            losses.append(loss)
        }
        return (losses, dlogits)
    }

    /// Attention on token matrices q, k, v [B*N, W] (W = H*dh, heads side by side) -> o [B*N, W]
    /// and lse [B, H, N]. Builds the full probability matrix.
    public static func attention(q: [Double], k: [Double], v: [Double], batch: Int, tokens: Int, heads: Int, headDimension: Int)
        -> (o: [Double], lse: [Double]) {
        let width = heads * headDimension, scale = 1 / Double(headDimension).squareRoot()
        var o = [Double](repeating: 0, count: batch * tokens * width), lse: [Double] = []
        for b in 0..<batch {
            for h in 0..<heads {
                for i in 0..<tokens {
                    let scores = (0..<tokens).map { j in
                        (0..<headDimension).reduce(0.0) { $0 + q[(b * tokens + i) * width + h * headDimension + $1] * k[(b * tokens + j) * width + h * headDimension + $1] } * scale
                    }
                    let maximum = scores.max()!
                    let sum = scores.reduce(0) { $0 + exp($1 - maximum) }
                    for j in 0..<tokens {
                        let p = exp(scores[j] - maximum) / sum
                        for c in 0..<headDimension { o[(b * tokens + i) * width + h * headDimension + c] += p * v[(b * tokens + j) * width + h * headDimension + c] }
                    }
                    lse.append(maximum + log(sum))
                }
            }
        }
        return (o, lse)
    }

    /// im2col of images [B, C, H, W] into [B * Np, C * P * P], columns (c, ky, kx).
    public static func patches(_ images: [Double], batch: Int, channels: Int, height: Int, width: Int, patch: Int) -> [Double] {
        var out: [Double] = []
        for b in 0..<batch {
            for py in 0..<height / patch {
                for px in 0..<width / patch {
                    for c in 0..<channels {
                        for ky in 0..<patch {
                            for kx in 0..<patch {
                                out.append(images[((b * channels + c) * height + py * patch + ky) * width + px * patch + kx])
                            }
                        }
                    }
                }
            }
        }
        return out
    }

    /// torch.optim.AdamW, one step from (m, v) with 1-based step t.
    public static func adamW(_ p: Double, _ g: Double, m: inout Double, v: inout Double, lr: Double, beta1: Double,
                             beta2: Double, eps: Double, weightDecay: Double, step t: Int) -> Double {
        let decayed = p - lr * weightDecay * p
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        let mHat = m / (1 - pow(beta1, Double(t))), vHat = v / (1 - pow(beta2, Double(t)))
        return decayed - lr * mHat / (vHat.squareRoot() + eps)
    }
}

extension Reference {
    /// (dq, dk, dv) of attention for dO, from the full probability matrices.
    public static func attentionBackward(q: [Double], k: [Double], v: [Double], dO: [Double], batch: Int, tokens: Int,
                                         heads: Int, headDimension: Int) -> (dq: [Double], dk: [Double], dv: [Double]) {
        let width = heads * headDimension, scale = 1 / Double(headDimension).squareRoot()
        var dq = [Double](repeating: 0, count: q.count), dk = dq, dv = dq
        func at(_ x: [Double], _ b: Int, _ t: Int, _ h: Int, _ c: Int) -> Double { x[(b * tokens + t) * width + h * headDimension + c] }
        func index(_ b: Int, _ t: Int, _ h: Int, _ c: Int) -> Int { (b * tokens + t) * width + h * headDimension + c }
        for b in 0..<batch {
            for h in 0..<heads {
                var p = [[Double]](repeating: [Double](repeating: 0, count: tokens), count: tokens)
                for i in 0..<tokens {
                    var scores = [Double](repeating: 0, count: tokens)
                    for j in 0..<tokens {
                        var dot = 0.0
                        for c in 0..<headDimension { dot += at(q, b, i, h, c) * at(k, b, j, h, c) }
                        scores[j] = dot * scale
                    }
                    let maximum = scores.max()!
                    let sum = scores.reduce(0) { $0 + exp($1 - maximum) }
                    for j in 0..<tokens { p[i][j] = exp(scores[j] - maximum) / sum }
                }
                for i in 0..<tokens {
                    var dp = [Double](repeating: 0, count: tokens)
                    for j in 0..<tokens {
                        for c in 0..<headDimension { dp[j] += at(dO, b, i, h, c) * at(v, b, j, h, c) }
                    }
                    let rowTerm = (0..<tokens).reduce(0.0) { $0 + p[i][$1] * dp[$1] }
                    for j in 0..<tokens {
                        let ds = p[i][j] * (dp[j] - rowTerm)
                        for c in 0..<headDimension {
                            dv[index(b, j, h, c)] += p[i][j] * at(dO, b, i, h, c)
                            dq[index(b, i, h, c)] += scale * ds * at(k, b, j, h, c)
                            dk[index(b, j, h, c)] += scale * ds * at(q, b, i, h, c)
                        }
                    }
                }
            }
        }
        return (dq, dk, dv)
    }

    /// Central difference of f at x[index], step h.
    public static func centralDifference(_ f: ([Double]) -> Double, at x: [Double], index: Int, step h: Double = 1e-6) -> Double {
        var plus = x, minus = x
        plus[index] += h
        minus[index] -= h
        return (f(plus) - f(minus)) / (2 * h)
    }
}
