package ollamasim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// Running is a Server listening on a TCP address.
type Running struct {
	srv  *Server
	addr string // the resolved address, so a healed Refuse listens on the same port
	http *http.Server

	mu      sync.Mutex // guards the fields below
	ln      net.Listener
	conns   map[net.Conn]struct{}
	closed  bool
	serving sync.WaitGroup
}

// Start listens on addr (such as "127.0.0.1:0" for a free port) and serves
// the node until Close or Shutdown. A Server can be started once, and not
// after Close.
func (s *Server) Start(addr string) (*Running, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	r := &Running{
		srv:   s,
		addr:  ln.Addr().String(),
		conns: make(map[net.Conn]struct{}),
	}
	r.http = &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		ConnState:         r.trackConn,
		ErrorLog:          slog.NewLogLogger(s.cfg.Logger.Handler(), slog.LevelDebug),
	}

	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	if s.running != nil || s.isClosed() {
		ln.Close()
		return nil, errors.New("start: server already started or closed")
	}
	s.running = r
	r.ln = ln
	r.serve(ln)
	if f, _ := s.faults.get(); f.Refuse {
		if err := r.setRefuse(true); err != nil {
			return nil, fmt.Errorf("start: %w", err)
		}
	}
	s.cfg.Logger.Info("listening", "addr", r.addr)
	return r, nil
}

// Addr returns the address the node listens on, such as "127.0.0.1:41234".
func (r *Running) Addr() string {
	return r.addr
}

// URL returns the base URL of the node, such as "http://127.0.0.1:41234".
func (r *Running) URL() string {
	return "http://" + r.addr
}

// Server returns the node being served.
func (r *Running) Server() *Server {
	return r.srv
}

func (r *Running) serve(ln net.Listener) {
	r.serving.Add(1)
	go func() {
		defer r.serving.Done()
		err := r.http.Serve(ln)
		r.srv.cfg.Logger.Debug("listener stopped", "addr", r.addr, "error", err)
	}()
}

func (r *Running) trackConn(c net.Conn, state http.ConnState) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch state {
	case http.StateNew:
		r.conns[c] = struct{}{}
	case http.StateHijacked, http.StateClosed:
		delete(r.conns, c)
	}
}

// setRefuse closes the listener and every open connection, or listens again
// on the same address.
func (r *Running) setRefuse(refuse bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	if refuse {
		if r.ln != nil {
			r.ln.Close()
			r.ln = nil
		}
		for c := range r.conns {
			c.Close()
		}
		return nil
	}
	if r.ln != nil {
		return nil
	}
	ln, err := net.Listen("tcp", r.addr)
	if err != nil {
		return fmt.Errorf("listen again on %s: %w", r.addr, err)
	}
	r.ln = ln
	r.serve(ln)
	return nil
}

// Close closes the listener and every connection at once, then closes the
// Server (see Server.Close).
func (r *Running) Close() error {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	err := r.http.Close()
	r.serving.Wait()
	r.srv.Close()
	// A listener or connection that a Refuse fault already closed is no
	// error here.
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("close %s: %w", r.addr, err)
	}
	return nil
}

// Shutdown stops accepting connections and waits for running requests to
// finish, or for ctx to end, before closing the Server.
func (r *Running) Shutdown(ctx context.Context) error {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	err := r.http.Shutdown(ctx)
	if err != nil {
		r.http.Close()
	}
	r.serving.Wait()
	r.srv.Close()
	if err != nil {
		return fmt.Errorf("shut down %s: %w", r.addr, err)
	}
	return nil
}
