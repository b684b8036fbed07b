public enum SloraGPU {
    public static let version = "0.1.0"
}
