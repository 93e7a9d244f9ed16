package sdnotify

import (
	"errors"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// listen binds a unixgram socket in a temporary folder and points
// NOTIFY_SOCKET at it, as systemd does for a unit of Type=notify.
func listen(t *testing.T) *net.UnixConn {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatalf("listen on %s: %v", path, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	return conn
}

// receive returns the next datagram, failing the test after 5s.
func receive(t *testing.T, conn *net.UnixConn) string {
	t.Helper()
	if err := conn.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatalf("read notification: %v", err)
	}
	return string(buf[:n])
}

func monotonicUsec(t *testing.T) int64 {
	t.Helper()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatalf("read CLOCK_MONOTONIC: %v", err)
	}
	return ts.Nano() / 1000
}

func TestMessages(t *testing.T) {
	conn := listen(t)
	cases := []struct {
		name string
		send func() error
		want string
	}{
		{"ready", Ready, "READY=1"},
		{"stopping", Stopping, "STOPPING=1"},
		{"status", func() error { return Status("2 of 3 nodes up") }, "STATUS=2 of 3 nodes up"},
		{"status line break", func() error { return Status("a\nREADY=1") }, "STATUS=a READY=1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.send(); err != nil {
				t.Fatalf("send: %v", err)
			}
			if got := receive(t, conn); got != tc.want {
				t.Errorf("datagram = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestReloadingCarriesMonotonicTime(t *testing.T) {
	conn := listen(t)
	before := monotonicUsec(t)
	if err := Reloading(); err != nil {
		t.Fatalf("Reloading: %v", err)
	}
	after := monotonicUsec(t)

	fields := strings.Split(strings.TrimSuffix(receive(t, conn), "\n"), "\n")
	if len(fields) != 2 {
		t.Fatalf("fields = %q, want RELOADING=1 and MONOTONIC_USEC", fields)
	}
	if fields[0] != "RELOADING=1" {
		t.Errorf("first field = %q, want RELOADING=1", fields[0])
	}
	value, ok := strings.CutPrefix(fields[1], "MONOTONIC_USEC=")
	if !ok {
		t.Fatalf("second field = %q, want MONOTONIC_USEC=...", fields[1])
	}
	usec, err := strconv.ParseInt(value, 10, 64)
	if err != nil {
		t.Fatalf("MONOTONIC_USEC %q: %v", value, err)
	}
	if usec < before || usec > after {
		t.Errorf("MONOTONIC_USEC = %d, want within [%d, %d]", usec, before, after)
	}
}

func TestWithoutSocketDoesNothing(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	for name, send := range map[string]func() error{
		"ready": Ready, "reloading": Reloading, "stopping": Stopping,
	} {
		if err := send(); err != nil {
			t.Errorf("%s without NOTIFY_SOCKET: %v, want nil", name, err)
		}
	}
}

func TestMissingSocketFails(t *testing.T) {
	path := filepath.Join(t.TempDir(), "absent.sock")
	t.Setenv("NOTIFY_SOCKET", path)
	err := Ready()
	if err == nil {
		t.Fatal("Ready with a missing socket: nil error, want one")
	}
	if !errors.Is(err, unix.ENOENT) {
		t.Errorf("error = %v, want one wrapping ENOENT", err)
	}
	if !strings.Contains(err.Error(), "READY=1") {
		t.Errorf("error = %q, want it to name READY=1", err)
	}
}
