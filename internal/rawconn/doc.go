// Package rawconn provides TCP connections whose reads and writes skip
// the Go runtime's system-call bookkeeping.
//
// A read or write on a net.TCPConn enters the runtime's system-call state.
// When the process was idle, that wakes the runtime's monitor thread
// (sysmon), which then sleeps and wakes every 20 µs until the scheduler is
// idle again. A proxy that serves requests one at a time pays for that
// wake-up on almost every request. The sockets are non-blocking, so
// read(2) and write(2) return at once. Calling them as raw system calls
// keeps the monitor asleep, and a socket that is not ready still waits in
// the network poller. On systems other than Linux, Wrap returns the
// connection unchanged.
//
// The connections also pass deadlines to the poller lazily, since a proxy
// moves them several times per request (see deadline), and can bound a
// waiting write by the peer's progress instead of by time
// (Conn.SetWriteStall).
package rawconn
