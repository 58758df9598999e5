import XCTest
@testable import SluiceUpstream

final class SluiceUpstreamPlaceholderTests: XCTestCase {
    func testModuleLinks() { XCTAssertEqual(1 + 1, 2) }
}
