import XCTest
@testable import SluiceTokenizer

final class SluiceTokenizerPlaceholderTests: XCTestCase {
    func testModuleLinks() { XCTAssertEqual(1 + 1, 2) }
}
