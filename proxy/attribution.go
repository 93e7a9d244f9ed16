package proxy

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/valyala/fastjson"

	"github.com/llmproxy/llmproxy/balancer"
)

// errorLedger holds the 5xx errors of one request whose node is not yet
// known to be at fault. Ollama sends 500 for errors of its own, such as a
// runner that crashed. It also sends 500 for errors that the request
// causes, such as a template that does not parse (GenerateHandler) or a
// num_ctx that needs more memory than a node has (the default branch of
// handleScheduleError). Counting the latter would let one client take
// nodes out. So an error is settled when
// the request ends, by what the request's other attempts show:
//
//   - another node served the request (any status below 500): every error
//     counts against its node;
//   - another node tried returned the same error (errorSignature): the
//     request caused it, and it counts against no node;
//   - nothing else: no other node confirmed or refuted it, as with a single
//     node or a model that one node has, and it counts against no node.
//
// Connection failures, timeouts, a 502 or 504 and a 5xx body without a
// message never wait here, and judge decides on them alone.
type errorLedger struct {
	entries []ledgerEntry
}

type ledgerEntry struct {
	node      *balancer.Node
	signature string
}

func (l *errorLedger) add(n *balancer.Node, signature string) {
	l.entries = append(l.entries, ledgerEntry{node: n, signature: signature})
}

// settleServed counts every held error against its node, because another
// node served the request.
func (s *Server) settleServed(l *errorLedger) {
	for _, e := range l.entries {
		s.report(e.node, reasonStatus5xx)
	}
	l.entries = l.entries[:0]
}

// settleUnserved settles the held errors of a request that no node served.
// None counts against its node, see errorLedger, and the request's log
// line states why.
func (s *Server) settleUnserved(rs *reqState, l *errorLedger) {
	if len(l.entries) == 0 {
		return
	}
	shared := false
	for i, e := range l.entries {
		reason := uncountedUnconfirmed
		if l.matchedElsewhere(i) {
			reason = uncountedRequest
			shared = true
		}
		if s.m != nil {
			s.m.UncountedErrors.WithLabelValues(e.node.Name, reason).Inc()
		}
	}
	if shared {
		rs.err += "; other nodes returned the same error, so the request caused it and it " +
			"counts against no node"
	} else {
		rs.err += "; no other node confirmed or refuted the error, so it counts against no node"
	}
	l.entries = l.entries[:0]
}

// matchedElsewhere reports whether another node returned the error of
// entry i.
func (l *errorLedger) matchedElsewhere(i int) bool {
	for j, o := range l.entries {
		if j != i && o.node != l.entries[i].node && o.signature == l.entries[i].signature {
			return true
		}
	}
	return false
}

// errorSignature returns the status and the message of a node's error
// body, with every run of digits replaced by "#". Errors that differ only
// in figures then compare equal, as Ollama's memory errors do, which name
// the memory that each node has free. It returns "" for a body without a
// message in Ollama's shape ({"error":"..."}) or OpenAI's and Anthropic's
// ({"error":{"message":"..."}}).
func errorSignature(status int, body []byte) string {
	var p fastjson.Parser
	doc, err := p.ParseBytes(body)
	if err != nil {
		return ""
	}
	msg := doc.GetStringBytes("error")
	if msg == nil {
		msg = doc.GetStringBytes("error", "message")
	}
	if len(msg) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString(itoa(status))
	b.WriteByte(' ')
	digits := false
	for _, c := range string(msg) {
		isDigit := c >= '0' && c <= '9'
		if isDigit && !digits {
			b.WriteByte('#')
		} else if !isDigit {
			b.WriteRune(c)
		}
		digits = isDigit
	}
	return b.String()
}

// probeAfterTimeout probes a node whose non-streamed response did not
// come within upstream.first_byte, and records the result in a for
// judgeFirstByteTimeout. Other attempts are left as they are. When the
// request ends during the probe, a takes the reason instead.
func (s *Server) probeAfterTimeout(ctx context.Context, rt route, f fields, n *balancer.Node, a *attempt) {
	if s.health == nil || !rt.inference || f.stream || !errors.Is(a.err, errFirstByteTimeout) ||
		errors.Is(a.err, errBodyNotTaken) {
		return
	}
	err := s.health.Alive(ctx, n)
	if ctx.Err() != nil {
		a.err = context.Cause(ctx)
		return
	}
	if err != nil {
		a.probe = probeFailed
		s.log.Debug("node failed the probe after a first-byte timeout", "node", n.Name, "error", err)
		return
	}
	a.probe = probePassed
	a.err = fmt.Errorf("%w; the node is up, but it sends a non-streamed response only when "+
		"generation ends: request a stream, or raise upstream.first_byte", a.err)
}
