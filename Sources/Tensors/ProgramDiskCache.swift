import Foundation

/// Compiled program binaries on disk, one file per key. The key names everything that can
/// change the binary (platform, device, driver version, source hash, build options), and the
/// file stores the full key and a checksum of the binary, so that a colliding, stale,
/// truncated or corrupted entry is detected and rebuilt, never handed to the driver.
///
/// File layout (little-endian):
///   magic "SLGKC001" | u32 key length | key (UTF-8) | u64 binary length | 32-byte SHA-256 of
///   the binary | binary
public struct ProgramDiskCache: Sendable {
    public let directory: URL

    public init(directory: URL) { self.directory = directory }

    public enum Lookup: Equatable, Sendable {
        case hit([UInt8])
        case miss
        /// The entry exists but cannot be trusted; the reason says why.
        case invalid(String)
    }

    static let magic = Array("SLGKC001".utf8)

    public func fileURL(forKey key: String) -> URL {
        directory.appendingPathComponent(String(SHA256.hex(key).prefix(32)) + ".clbin")
    }

    public func load(key: String) -> Lookup {
        let url = fileURL(forKey: key)
        guard FileManager.default.fileExists(atPath: url.path) else { return .miss }
        guard let data = try? Data(contentsOf: url) else { return .invalid("unreadable file \(url.path)") }
        return Self.parse([UInt8](data), key: key, name: url.lastPathComponent)
    }

    /// Reads one entry's bytes; every length field is checked against the bytes present (a
    /// flipped bit in one must give `.invalid`, never a trap). `name` is used in the reason.
    public static func parse(_ bytes: [UInt8], key: String, name: String) -> Lookup {
        var reader = ByteReader(bytes: bytes)
        guard reader.take(Self.magic.count) == Self.magic else { return .invalid("bad magic in \(name)") }
        guard let keyLength = reader.uint(bytes: 4), let keyBytes = reader.take(keyLength) else {
            return .invalid("truncated key in \(name)")
        }
        guard String(decoding: keyBytes, as: UTF8.self) == key else {
            return .invalid("key mismatch in \(name) (stale or colliding entry)")
        }
        guard let binaryLength = reader.uint(bytes: 8), let checksum = reader.take(32),
              let binary = reader.take(binaryLength), reader.isAtEnd
        else {
            return .invalid("truncated or oversized binary in \(name)")
        }
        guard SHA256.digest(binary) == checksum else {
            return .invalid("checksum mismatch in \(name)")
        }
        return .hit(binary)
    }

    /// Writes to a temporary file in the same directory, then renames it into place, so that
    /// a concurrent reader or a crash never sees half an entry.
    public func store(key: String, binary: [UInt8]) throws {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        var bytes = Self.magic
        let keyBytes = Array(key.utf8)
        bytes += littleEndian(UInt64(keyBytes.count), bytes: 4)
        bytes += keyBytes
        bytes += littleEndian(UInt64(binary.count), bytes: 8)
        bytes += SHA256.digest(binary)
        bytes += binary
        let url = fileURL(forKey: key)
        let temporary = directory.appendingPathComponent(".\(url.lastPathComponent).\(ProcessInfo.processInfo.processIdentifier).\(UInt32.random(in: 0...UInt32.max)).tmp")
        do {
            try Data(bytes).write(to: temporary)
            if rename(temporary.path, url.path) != 0 {
                throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: url.path])
            }
        } catch {
            try? FileManager.default.removeItem(at: temporary)
            throw error
        }
    }

    private func littleEndian(_ value: UInt64, bytes count: Int) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: value >> UInt64(8 * $0)) }
    }
}

private struct ByteReader {
    let bytes: [UInt8]
    var position = 0

    var isAtEnd: Bool { position == bytes.count }

    mutating func take(_ count: Int) -> [UInt8]? {
        guard count >= 0, count <= bytes.count - position else { return nil }
        defer { position += count }
        return Array(bytes[position..<position + count])
    }

    /// A length read from the file: nil when it cannot be a count of bytes present.
    mutating func take(_ count: UInt64) -> [UInt8]? {
        guard let exact = Int(exactly: count) else { return nil }
        return take(exact)
    }

    mutating func uint(bytes count: Int) -> UInt64? {
        guard let raw = take(count) else { return nil }
        return raw.enumerated().reduce(0) { $0 | UInt64($1.element) << UInt64(8 * $1.offset) }
    }
}
