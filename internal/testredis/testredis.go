// Package testredis starts a private redis-server on a free loopback port for
// tests, so that code which shares state through Redis is tested against the
// real server rather than a stand-in.
package testredis

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// Server is a running redis-server owned by one test.
type Server struct {
	// Addr is the host:port the server listens on, always on 127.0.0.1.
	Addr string

	cmd  *exec.Cmd
	port int
	dir  string
}

// Start launches redis-server on a free port and stops it when the test ends.
// The test fails when redis-server is not installed: `make deps` installs it.
func Start(t testing.TB) *Server {
	t.Helper()
	path, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server not found on PATH (run `make deps`): %v", err)
	}
	s := &Server{dir: t.TempDir(), port: freePort(t)}
	s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
	s.start(t, path)
	t.Cleanup(s.Stop)
	return s
}

func (s *Server) start(t testing.TB, path string) {
	t.Helper()
	s.cmd = exec.Command(path,
		"--bind", "127.0.0.1",
		"--port", strconv.Itoa(s.port),
		"--save", "",
		"--appendonly", "no",
		"--dir", s.dir,
	)
	s.cmd.Stdout = os.Stderr
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start redis-server: %v", err)
	}
	if err := waitListening(s.Addr, 10*time.Second); err != nil {
		t.Fatalf("redis-server on %s: %v", s.Addr, err)
	}
}

// Stop ends the server and waits for it to exit. Stopping twice is harmless.
func (s *Server) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}

// Restart starts the server again on the same port after Stop, with an
// empty data set.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop()
	path, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server not found: %v", err)
	}
	s.start(t, path)
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func waitListening(addr string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err == nil {
			return c.Close()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not listening after %s: %w", limit, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// DataDir returns the server's working folder.
func (s *Server) DataDir() string { return filepath.Clean(s.dir) }
