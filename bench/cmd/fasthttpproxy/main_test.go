package main

import (
	"encoding/json"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/ollamasim"
)

const generateBody = `{"model":"m","prompt":"hi","stream":false,"options":{"num_predict":4}}`

// serve starts the proxy's handler on a loopback port in front of nodes
// and returns its address.
func serve(t *testing.T, nodes []*node) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &fasthttp.Server{Handler: forwardTo(nodes)}
	go func() { _ = s.Serve(ln) }()
	t.Cleanup(func() { _ = s.Shutdown() })
	return ln.Addr().String()
}

func generate(t *testing.T, addr string) *fasthttp.Response {
	t.Helper()
	req := fasthttp.AcquireRequest()
	defer fasthttp.ReleaseRequest(req)
	resp := &fasthttp.Response{}
	req.Header.SetMethod(fasthttp.MethodPost)
	req.SetRequestURI("http://" + addr + "/api/generate")
	req.Header.SetContentType("application/json")
	req.SetBodyString(generateBody)
	if err := fasthttp.DoTimeout(req, resp, 10*time.Second); err != nil {
		t.Fatalf("POST /api/generate: %v", err)
	}
	return resp
}

func TestForwardsToNodeWithFewestInFlight(t *testing.T) {
	sims := []*ollamasim.Running{
		testenv.Sim(t, "m", ollamasim.Config{}),
		testenv.Sim(t, "m", ollamasim.Config{}),
	}
	nodes, err := parseNodes(sims[0].Addr() + "," + sims[1].Addr())
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, nodes)

	// With no request in flight anywhere, the first node wins the tie.
	if resp := generate(t, addr); resp.StatusCode() != fasthttp.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode(), resp.Body())
	}
	// A node with requests in flight loses to one without.
	nodes[0].inFlight.Add(3)
	if resp := generate(t, addr); resp.StatusCode() != fasthttp.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode(), resp.Body())
	}
	nodes[0].inFlight.Add(-3)

	for i, want := range []int64{1, 1} {
		if got := sims[i].Server().Stats().Requests["/api/generate"]; got != want {
			t.Errorf("node %d received %d generate requests, want %d", i, got, want)
		}
	}
}

func TestUnreachableNodeIsBadGatewayInOllamaShape(t *testing.T) {
	// A listener closed at once leaves a loopback port that refuses.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	_ = ln.Close()
	nodes, err := parseNodes(dead)
	if err != nil {
		t.Fatal(err)
	}
	resp := generate(t, serve(t, nodes))
	if resp.StatusCode() != fasthttp.StatusBadGateway {
		t.Fatalf("status %d, want 502", resp.StatusCode())
	}
	var body struct{ Error string }
	if err := json.Unmarshal(resp.Body(), &body); err != nil || body.Error == "" {
		t.Fatalf("body %q is not {\"error\":\"...\"}: %v", resp.Body(), err)
	}
}

func TestParseNodesRejectsBadLists(t *testing.T) {
	for _, list := range []string{"", " , ", "127.0.0.1", "127.0.0.1:1,localhost"} {
		if _, err := parseNodes(list); err == nil {
			t.Errorf("parseNodes(%q) succeeded, want an error", list)
		} else if !strings.Contains(err.Error(), "-nodes") {
			t.Errorf("parseNodes(%q) error %q does not name the flag", list, err)
		}
	}
}
