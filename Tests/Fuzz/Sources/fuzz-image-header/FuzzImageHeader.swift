import Foundation
import FuzzSupport
import SluiceCore
import SluiceTokenizer

/// The image header reader (PNG, GIF, WebP, JPEG) on arbitrary image bytes, reached as the
/// server reaches it: base64 in a `data:` URL of a chat request's `image_url` part.
///
/// Properties:
/// - the request is accepted (the image's bytes cannot make it invalid);
/// - a size, when read, is positive, and for PNG and GIF it is the one in the header;
/// - the image's token cost lies between the low-detail cost and the worst case.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let image = Array(fuzzInput(data, size))
    let url = "data:image/png;base64," + Data(image).base64EncodedString()
    let body = #"{"model":"gpt-4o","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"\#(url)","detail":"high"}}]}]}"#
    let request: OpenAIRequest
    do {
        request = try OpenAIRequest.parse(Array(body.utf8), endpoint: .chatCompletions)
    } catch {
        fatalError("property violated: a chat request with an image was refused: \(error)")
    }
    guard case .chat(let prompt) = request.prompt, case .image(let read) = prompt.messages.first?.content.first else {
        fatalError("property violated: the image part was not read as an image")
    }

    if let width = read.width, let height = read.height {
        require(width > 0 && height > 0, "size \(width)×\(height)")
    } else {
        require(read.width == nil && read.height == nil, "only one side read")
    }
    if let expected = headerSize(image) {
        require(read.width == expected.width && read.height == expected.height,
                "read \(String(describing: read.width))×\(String(describing: read.height)), the header says \(expected.width)×\(expected.height)")
    }

    let cost = ImageTokenCost.gpt4oClass
    let tokens = cost.tokens(for: read)
    let worst = cost.baseTokens + cost.tileTokens * cost.worstCaseTileCount
    require(tokens >= cost.lowDetailTokens && tokens <= worst, "image costs \(tokens) tokens, outside \(cost.lowDetailTokens)...\(worst)")
    return 0
}

/// PNG's IHDR and GIF's logical screen size, read the plain way (nil for other formats, and for
/// a zero side, which the reader treats as unknown).
private func headerSize(_ b: [UInt8]) -> (width: Int, height: Int)? {
    func be32(_ at: Int) -> Int { b[at..<(at + 4)].reduce(0) { $0 << 8 | Int($1) } }
    func le16(_ at: Int) -> Int { Int(b[at]) | Int(b[at + 1]) << 8 }
    if b.count >= 24, b.starts(with: [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]), b[12..<16].elementsEqual("IHDR".utf8) {
        let size = (width: be32(16), height: be32(20))
        return size.width > 0 && size.height > 0 ? size : nil
    }
    if b.count >= 10, b.starts(with: "GIF87a".utf8) || b.starts(with: "GIF89a".utf8) {
        let size = (width: le16(6), height: le16(8))
        return size.width > 0 && size.height > 0 ? size : nil
    }
    return nil
}
