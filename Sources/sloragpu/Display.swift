import Foundation

/// Text from files (class names, paths) made safe for a terminal: control characters, which
/// could move the cursor or recolour the screen, are shown as escapes.
func displayName(_ text: String) -> String {
    var result = ""
    for scalar in text.unicodeScalars {
        switch scalar {
        case "\n": result += "\\n"
        case "\t": result += "\\t"
        case "\r": result += "\\r"
        case "\\": result += "\\\\"
        default:
            if scalar.properties.generalCategory == .control || scalar.properties.generalCategory == .format {
                result += "\\u{\(String(scalar.value, radix: 16, uppercase: true))}"
            } else {
                result.unicodeScalars.append(scalar)
            }
        }
    }
    return result
}

/// A short, display-safe rendering of a list of names.
func displayList(_ names: [String], limit: Int = 6) -> String {
    let shown = names.prefix(limit).map { "'\(displayName($0))'" }.joined(separator: ", ")
    return names.count > limit ? shown + ", ..." : shown
}

/// `text` as one word for a POSIX shell: as it is when it holds only safe characters, else in
/// single quotes.
func shellQuoted(_ text: String) -> String {
    let safe = CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "-_./:=+@%,"))
    if !text.isEmpty, text.unicodeScalars.allSatisfy({ safe.contains($0) && $0.isASCII }) { return text }
    return "'" + text.replacingOccurrences(of: "'", with: "'\\''") + "'"
}
