package proxy

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/valyala/fasthttp"
)

// This package's tests fail at once on a request record ended twice,
// instead of going on with a record that two requests share.
func init() { panicOnStaleEnd = true }

// recordServer returns a server with just what begin and end use, and
// its log.
func recordServer() (*Server, *bytes.Buffer) {
	var logs bytes.Buffer
	return &Server{log: slog.New(slog.NewTextHandler(&logs, nil))}, &logs
}

// lenientEnds makes stale ends logged no-ops, as in production, until the
// test ends.
func lenientEnds(t *testing.T) {
	panicOnStaleEnd = false
	t.Cleanup(func() { panicOnStaleEnd = true })
}

func TestSecondEndIsIgnored(t *testing.T) {
	lenientEnds(t)
	s, logs := recordServer()
	rs := s.begin(&fasthttp.RequestCtx{}, routeNotFound)
	token := rs.gen.Load()
	s.end(rs)
	s.end(rs)
	if got := strings.Count(logs.String(), "msg=request "); got != 1 {
		t.Errorf("%d access log lines, want 1:\n%s", got, logs)
	}
	if !strings.Contains(logs.String(), "request record ended twice") {
		t.Errorf("second end not reported:\n%s", logs)
	}
	if got := rs.gen.Load(); got != token+1 {
		t.Errorf("generation %d after two ends, want %d: the second end must change nothing", got, token+1)
	}
}

func TestStaleOwnerCannotEndNextRequest(t *testing.T) {
	lenientEnds(t)
	s, logs := recordServer()
	rs := s.begin(&fasthttp.RequestCtx{}, routeNotFound)
	stale := rs.gen.Load()
	s.end(rs)
	// The pool usually hands the same record to the next request.
	next := s.begin(&fasthttp.RequestCtx{}, routeNotFound)
	next.id = "next"
	s.endHandled(rs, stale)
	s.endAs(rs, stale)
	if got := strings.Count(logs.String(), "request record ended twice"); got != 2 {
		t.Errorf("%d stale ends reported, want 2:\n%s", got, logs)
	}
	if strings.Contains(logs.String(), "request_id=next") || next.id != "next" {
		t.Errorf("a stale owner ended the next request (id now %q):\n%s", next.id, logs)
	}
	s.end(next)
}

func TestSecondEndPanicsInTests(t *testing.T) {
	s, _ := recordServer()
	rs := s.begin(&fasthttp.RequestCtx{}, routeNotFound)
	s.end(rs)
	defer func() {
		if recover() == nil {
			t.Error("second end did not panic with panicOnStaleEnd set")
		}
	}()
	s.end(rs)
}
