package harness

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// FreeAddr returns a free TCP address on 127.0.0.1. Another process may
// take the port before the caller binds it. The caller then fails to
// start and the run stops with that error.
func FreeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// readyTimeout bounds the wait for a started server to respond.
const readyTimeout = 15 * time.Second

// WaitReady posts body to url until the response has status 200, the process
// exits, or readyTimeout passes. A POST of a generation request also loads
// the model on the node that serves it.
func WaitReady(ctx context.Context, p *Proc, url string, body []byte) error {
	return waitFor(ctx, p, url, func(ctx context.Context) error {
		return requestOnce(ctx, http.MethodPost, url, body)
	})
}

// WaitReadyGet gets url until the response has status 200, the process
// exits, or readyTimeout passes.
func WaitReadyGet(ctx context.Context, p *Proc, url string) error {
	return waitFor(ctx, p, url, func(ctx context.Context) error {
		return requestOnce(ctx, http.MethodGet, url, nil)
	})
}

// waitFor calls try every 50 ms until it returns nil, the process exits,
// or readyTimeout passes.
func waitFor(ctx context.Context, p *Proc, url string, try func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	var last error
	for {
		if p != nil && p.Exited() {
			return fmt.Errorf("%s exited before it was ready: %w (see its log)", p.Name, p.waitErr)
		}
		last = try(ctx)
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s: %w (last error: %w)", url, ctx.Err(), last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func requestOnce(ctx context.Context, method, url string, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d: %s", resp.StatusCode, bytes.TrimSpace(msg))
	}
	return nil
}
