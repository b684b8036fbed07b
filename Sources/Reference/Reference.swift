import Foundation

/// Plain loops in Double, written for obviousness, never speed. Every device kernel is tested
/// against one of these. Matrices are row-major flat arrays.
public enum Reference {
    /// Element (row, col) of op(X) where X is stored row-major with `storedColumns` columns.
    @inline(__always)
    static func element(_ x: [Float], _ row: Int, _ column: Int, transposed: Bool, storedColumns: Int) -> Double {
        Double(transposed ? x[column * storedColumns + row] : x[row * storedColumns + column])
    }

    /// op(A) op(B) for op(A) M x K and op(B) K x N; returns M x N.
    public static func matmul(_ a: [Float], _ b: [Float], m: Int, n: Int, k: Int,
                              transposeA: Bool = false, transposeB: Bool = false) -> [Double] {
        var c = [Double](repeating: 0, count: m * n)
        let aColumns = transposeA ? m : k
        let bColumns = transposeB ? k : n
        for i in 0..<m {
            for j in 0..<n {
                var sum = 0.0
                for p in 0..<k {
                    sum += element(a, i, p, transposed: transposeA, storedColumns: aColumns)
                        * element(b, p, j, transposed: transposeB, storedColumns: bColumns)
                }
                c[i * n + j] = sum
            }
        }
        return c
    }

    public static func gelu(_ x: Double) -> Double { 0.5 * x * (1 + erf(x / 2.0.squareRoot())) }

    /// CLIP's quick GELU, x sigmoid(1.702 x).
    public static func quickGelu(_ x: Double) -> Double { x / (1 + exp(-1.702 * x)) }

    /// d quick_gelu / dx = s + 1.702 x s (1 - s), s = sigmoid(1.702 x).
    public static func quickGeluDerivative(_ x: Double) -> Double {
        let s = 1 / (1 + exp(-1.702 * x))
        return s + 1.702 * x * s * (1 - s)
    }

    /// d gelu / dx = Phi(x) + x phi(x).
    public static func geluDerivative(_ x: Double) -> Double {
        0.5 * (1 + erf(x / 2.0.squareRoot())) + x * exp(-0.5 * x * x) / (2 * Double.pi).squareRoot()
    }
}
