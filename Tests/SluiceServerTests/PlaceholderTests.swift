import XCTest
@testable import SluiceServer

final class SluiceServerPlaceholderTests: XCTestCase {
    func testModuleLinks() { XCTAssertEqual(1 + 1, 2) }
}
