import XCTest

@testable import SluiceUpstream

final class UpstreamTransferStateMachineTests: XCTestCase {
    private typealias Machine = UpstreamTransferStateMachine
    private typealias State = Machine.State

    /// Every event the engine can feed the machine, with the action it returned rendered comparably.
    private enum Event: CustomStringConvertible {
        case start, head, body, fellBehind, caughtUp, succeeded, failed(UpstreamError.Kind)

        var description: String {
            switch self {
            case .start: "start"
            case .head: "head"
            case .body: "body"
            case .fellBehind: "fellBehind"
            case .caughtUp: "caughtUp"
            case .succeeded: "succeeded"
            case .failed(let kind): "failed(\(kind))"
            }
        }

        func apply(to machine: inout Machine) -> String {
            switch self {
            case .start: "\(machine.start())"
            case .head: "\(machine.headReceived())"
            case .body: "\(machine.bodyReceived())"
            case .fellBehind: "\(machine.consumerFellBehind())"
            case .caughtUp: "\(machine.consumerCaughtUp())"
            case .succeeded: "\(machine.transferSucceeded())"
            case .failed(let kind): "\(machine.transferFailed(kind))"
            }
        }
    }

    /// The shortest event path from `idle` to each state.
    private static let paths: [State: [Event]] = [
        .idle: [],
        .started: [.start],
        .headReceived: [.start, .head],
        .streaming: [.start, .head, .body],
        .paused: [.start, .head, .body, .fellBehind],
        .finished: [.start, .head, .succeeded],
        .failed(.stallTimeout): [.start, .head, .failed(.stallTimeout)],
        .cancelled: [.start, .failed(.cancelled)],
    ]

    private func machine(in state: State) -> Machine {
        var machine = Machine()
        for event in Self.paths[state]! { _ = event.apply(to: &machine) }
        XCTAssertEqual(machine.state, state, "path to \(state)")
        return machine
    }

    func testTransitionTable() {
        // (from, event, expected action, expected next state)
        let table: [(State, Event, String, State)] = [
            // idle
            (.idle, .start, "attach", .started),
            (.idle, .head, "ignore", .idle),
            (.idle, .body, "refuse", .idle),
            (.idle, .fellBehind, "none", .idle),
            (.idle, .caughtUp, "none", .idle),
            (.idle, .succeeded, "none", .idle),
            (.idle, .failed(.cancelled), "none", .cancelled),
            (.idle, .failed(.shuttingDown), "none", .failed(.shuttingDown)),
            // started
            (.started, .head, "deliverHead", .headReceived),
            (.started, .body, "refuse", .started),
            (.started, .fellBehind, "none", .started),
            (.started, .caughtUp, "none", .started),
            (.started, .succeeded, "failHead(SluiceUpstream.UpstreamError.Kind.other)", .failed(.other)),
            (.started, .failed(.firstByteTimeout), "failHead(SluiceUpstream.UpstreamError.Kind.firstByteTimeout)", .failed(.firstByteTimeout)),
            (.started, .failed(.cancelled), "failHead(SluiceUpstream.UpstreamError.Kind.cancelled)", .cancelled),
            // headReceived
            (.headReceived, .head, "ignore", .headReceived),
            (.headReceived, .body, "deliver", .streaming),
            (.headReceived, .fellBehind, "pause", .paused),
            (.headReceived, .caughtUp, "none", .headReceived),
            (.headReceived, .succeeded, "finishBody", .finished),
            (.headReceived, .failed(.connectionDropped), "failBody(SluiceUpstream.UpstreamError.Kind.connectionDropped)", .failed(.connectionDropped)),
            // streaming
            (.streaming, .head, "ignore", .streaming),
            (.streaming, .body, "deliver", .streaming),
            (.streaming, .fellBehind, "pause", .paused),
            (.streaming, .caughtUp, "none", .streaming),
            (.streaming, .succeeded, "finishBody", .finished),
            (.streaming, .failed(.stallTimeout), "failBody(SluiceUpstream.UpstreamError.Kind.stallTimeout)", .failed(.stallTimeout)),
            (.streaming, .failed(.cancelled), "failBody(SluiceUpstream.UpstreamError.Kind.cancelled)", .cancelled),
            // paused
            (.paused, .body, "holdBack", .paused),
            (.paused, .fellBehind, "none", .paused),
            (.paused, .caughtUp, "resume", .streaming),
            (.paused, .succeeded, "finishBody", .finished),
            (.paused, .failed(.shuttingDown), "failBody(SluiceUpstream.UpstreamError.Kind.shuttingDown)", .failed(.shuttingDown)),
            // terminal states ignore everything and reject a late start
            (.finished, .body, "refuse", .finished),
            (.finished, .succeeded, "none", .finished),
            (.finished, .failed(.cancelled), "none", .finished),
            (.failed(.stallTimeout), .failed(.cancelled), "none", .failed(.stallTimeout)),
            (.failed(.stallTimeout), .start, "reject(SluiceUpstream.UpstreamError.Kind.stallTimeout)", .failed(.stallTimeout)),
            (.cancelled, .start, "reject(SluiceUpstream.UpstreamError.Kind.cancelled)", .cancelled),
            (.cancelled, .head, "ignore", .cancelled),
            (.cancelled, .caughtUp, "none", .cancelled),
        ]
        for (from, event, expectedAction, expectedState) in table {
            var machine = machine(in: from)
            let action = event.apply(to: &machine)
            XCTAssertEqual(action, expectedAction, "\(from) --\(event)-->")
            XCTAssertEqual(machine.state, expectedState, "\(from) --\(event)-->")
        }
    }

    func testDerivedFlags() {
        let expectations: [(State, terminal: Bool, attached: Bool, headDelivered: Bool)] = [
            (.idle, false, false, false),
            (.started, false, true, false),
            (.headReceived, false, true, true),
            (.streaming, false, true, true),
            (.paused, false, true, true),
            (.finished, true, false, false),
            (.failed(.stallTimeout), true, false, false),
            (.cancelled, true, false, false),
        ]
        for (state, terminal, attached, headDelivered) in expectations {
            let machine = machine(in: state)
            XCTAssertEqual(machine.isTerminal, terminal, "\(state).isTerminal")
            XCTAssertEqual(machine.isAttached, attached, "\(state).isAttached")
            XCTAssertEqual(machine.headDelivered, headDelivered, "\(state).headDelivered")
        }
    }

    /// A cancel that overtakes its start command: the start is rejected, nothing is attached.
    func testCancelBeforeStartRejectsStart() {
        var machine = Machine()
        XCTAssertEqual(machine.transferFailed(.cancelled), .none)
        XCTAssertEqual(machine.start(), .reject(.cancelled))
        XCTAssertFalse(machine.isAttached)
    }

    /// Pause/resume can repeat any number of times during one stream.
    func testPauseResumeCycles() {
        var machine = machine(in: .streaming)
        for _ in 0..<3 {
            XCTAssertEqual(machine.consumerFellBehind(), .pause)
            XCTAssertEqual(machine.consumerFellBehind(), .none)
            XCTAssertEqual(machine.bodyReceived(), .holdBack)
            XCTAssertEqual(machine.consumerCaughtUp(), .resume)
            XCTAssertEqual(machine.consumerCaughtUp(), .none)
            XCTAssertEqual(machine.bodyReceived(), .deliver)
        }
        XCTAssertEqual(machine.transferSucceeded(), .finishBody)
    }
}
