import XCTest
@testable import SluiceCore

final class SluiceCorePlaceholderTests: XCTestCase {
    func testModuleLinks() { XCTAssertEqual(1 + 1, 2) }
}
