package harness

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"time"
)

// Redis is a running redis-server started by an Env.
type Redis struct {
	// Addr is host:port on 127.0.0.1.
	Addr string
	Proc *Proc
}

// StartRedis starts redis-server on a free port of 127.0.0.1 without
// persistence (--save "" --appendonly no), so that it writes no files, and
// waits until it replies to PING.
func StartRedis(ctx context.Context, e *Env) (*Redis, error) {
	bin, err := findSystemBinary("redis-server")
	if err != nil {
		return nil, err
	}
	addr, err := FreeAddr()
	if err != nil {
		return nil, err
	}
	_, port, _ := net.SplitHostPort(addr)

	dir := e.Path("redis")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create redis folder: %w", err)
	}
	p, err := e.Start(ProcSpec{
		Name: "redis",
		Path: bin,
		Args: []string{"--bind", "127.0.0.1", "--port", port, "--save", "", "--appendonly", "no",
			"--dir", dir},
	})
	if err != nil {
		return nil, err
	}

	err = waitFor(ctx, p, "redis://"+addr, func(ctx context.Context) error {
		return pingRedis(ctx, addr)
	})
	if err != nil {
		p.Stop()
		return nil, err
	}
	return &Redis{Addr: addr, Proc: p}, nil
}

// pingRedis sends PING in the Redis protocol and expects +PONG.
func pingRedis(ctx context.Context, addr string) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(time.Second)); err != nil {
		return err
	}
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("PING returned %q, want +PONG", line)
	}
	return nil
}
