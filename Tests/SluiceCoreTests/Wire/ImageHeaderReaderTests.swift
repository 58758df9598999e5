import Foundation
import XCTest
@testable import SluiceCore

final class ImageHeaderReaderTests: XCTestCase {
    private func dataURL(_ bytes: [UInt8], type: String) -> String {
        "data:image/\(type);base64," + Data(bytes).base64EncodedString()
    }

    func testReadsSizesFromEachFormatHeader() {
        // Minimal headers laid out per each format's specification (PNG IHDR, GIF logical screen,
        // WebP VP8X/VP8L/VP8 chunk headers, JPEG SOF0 after an APP0 segment).
        var png: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 13] + Array("IHDR".utf8)
        png += [0, 0, 0x03, 0x20, 0, 0, 0x02, 0x58] // 800 × 600
        var gif = Array("GIF89a".utf8) + [0x40, 0x01, 0xF0, 0x00] // 320 × 240
        gif += [0, 0, 0]
        let webpX = Array("RIFF".utf8) + [0, 0, 0, 0] + Array("WEBP".utf8) + Array("VP8X".utf8) + [10, 0, 0, 0]
            + [0, 0, 0, 0] + [0xFF, 0x03, 0x00] + [0x7F, 0x02, 0x00] + [0, 0] // 1024 × 640
        let vp8lBits = (1999) | (999 << 14) // 2000 × 1000
        let webpL = Array("RIFF".utf8) + [0, 0, 0, 0] + Array("WEBP".utf8) + Array("VP8L".utf8) + [0, 0, 0, 0] + [0x2F]
            + [UInt8(vp8lBits & 0xFF), UInt8(vp8lBits >> 8 & 0xFF), UInt8(vp8lBits >> 16 & 0xFF), UInt8(vp8lBits >> 24 & 0xFF)] + [0, 0, 0, 0, 0]
        let webp = Array("RIFF".utf8) + [0, 0, 0, 0] + Array("WEBP".utf8) + Array("VP8 ".utf8) + [0, 0, 0, 0]
            + [0, 0, 0, 0x9D, 0x01, 0x2A, 0x80, 0x02, 0xE0, 0x01] // 640 × 480
        let jpeg: [UInt8] = [0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10] + Array("JFIF".utf8) + [0] + Array(repeating: 0, count: 9)
            + [0xFF, 0xC0, 0x00, 0x11, 0x08, 0x04, 0x38, 0x07, 0x80, 0x03] + Array(repeating: 0, count: 9) // 1920 × 1080
        let cases: [([UInt8], String, Int, Int)] = [
            (png, "png", 800, 600), (gif, "gif", 320, 240), (webpX, "webp", 1024, 640),
            (webpL, "webp", 2000, 1000), (webp, "webp", 640, 480), (jpeg, "jpeg", 1920, 1080),
        ]
        for (bytes, type, width, height) in cases {
            let size = ImageHeaderReader.dimensions(ofDataURL: dataURL(bytes, type: type))
            XCTAssertEqual(size?.width, width, type)
            XCTAssertEqual(size?.height, height, type)
        }
    }

    func testUnknownOrDamagedImagesHaveNoSize() {
        XCTAssertNil(ImageHeaderReader.dimensions(ofDataURL: "https://example.com/a.png"))
        XCTAssertNil(ImageHeaderReader.dimensions(ofDataURL: "data:image/png,rawbytes"))
        XCTAssertNil(ImageHeaderReader.dimensions(ofDataURL: "data:image/png;base64,"))
        XCTAssertNil(ImageHeaderReader.dimensions(ofDataURL: "data:image/png;base64,iVBORw0KGgo="))
        XCTAssertNil(ImageHeaderReader.dimensions(ofDataURL: dataURL([0xFF, 0xD8, 0xFF, 0xC0, 0x00], type: "jpeg")))
        XCTAssertNil(ImageHeaderReader.dimensions(ofDataURL: dataURL(Array(repeating: 0xFF, count: 64), type: "jpeg")))
    }
}
