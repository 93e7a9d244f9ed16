// Package testredis starts a private redis-server on a free loopback port for
// tests, so that code which shares state through Redis is tested against the
// real server rather than a stand-in.
package testredis

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
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

// Save writes the data set to the server's folder with SAVE, so that the
// next Restart loads it. The server writes nothing by itself.
func (s *Server) Save(t testing.TB) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", s.Addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial redis-server on %s: %v", s.Addr, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := conn.Write([]byte("*1\r\n$4\r\nSAVE\r\n")); err != nil {
		t.Fatalf("send SAVE to %s: %v", s.Addr, err)
	}
	reply, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		t.Fatalf("read the reply to SAVE from %s: %v", s.Addr, err)
	}
	if reply != "+OK\r\n" {
		t.Fatalf("SAVE on %s replied %q, want +OK", s.Addr, reply)
	}
}

// Pause stops the server process with SIGSTOP, as a Redis that hangs: it
// accepts connections but runs no command until Resume. Commands sent
// meanwhile run when it resumes.
func (s *Server) Pause(t testing.TB) {
	t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatalf("pause redis-server: %v", err)
	}
	t.Cleanup(func() { s.resume() })
}

// Resume continues a server that Pause stopped.
func (s *Server) Resume(t testing.TB) {
	t.Helper()
	if err := s.resume(); err != nil {
		t.Fatalf("resume redis-server: %v", err)
	}
}

func (s *Server) resume() error {
	if s.cmd == nil || s.cmd.Process == nil {
		return nil
	}
	return s.cmd.Process.Signal(syscall.SIGCONT)
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

// Restart starts the server again on the same port after Stop. It loads
// the data of the last Save, and starts with an empty data set when Save
// was never called.
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
