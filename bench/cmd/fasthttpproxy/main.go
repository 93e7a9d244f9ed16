// Command fasthttpproxy is a minimal reverse proxy built from the Go HTTP
// library that llmproxy uses. Its fasthttp server sends each request
// through a fasthttp.HostClient to the node with the fewest requests in
// flight and returns the node's response unchanged. It has
// none of llmproxy's work per request (no body inspection, model routing,
// health reports, metrics, limits or client watch), and it buffers each
// response whole, so it serves only non-streamed requests.
//
// The benchmark runs it next to llmproxy to split llmproxy's cost per
// request into what Go's runtime and fasthttp cost by themselves and what
// llmproxy's own handling adds.
//
// Usage:
//
//	fasthttpproxy -listen 127.0.0.1:8080 -nodes 127.0.0.1:11435,127.0.0.1:11436
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"strings"
	"sync/atomic"

	"github.com/valyala/fasthttp"
)

// maxConnsPerNode matches the bound that the benchmark gives every proxy.
const maxConnsPerNode = 4096

// node is one upstream and its requests in flight.
type node struct {
	client   *fasthttp.HostClient
	inFlight atomic.Int64
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "fasthttpproxy:", err)
		}
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("fasthttpproxy", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:8080", "`address` to listen on")
	list := fs.String("nodes", "", "comma-separated node `addresses` (host:port)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	nodes, err := parseNodes(*list)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	s := &fasthttp.Server{
		Handler:               forwardTo(nodes),
		NoDefaultServerHeader: true,
		NoDefaultDate:         true,
	}
	return s.Serve(ln)
}

func parseNodes(list string) ([]*node, error) {
	var nodes []*node
	for _, addr := range strings.Split(list, ",") {
		addr = strings.TrimSpace(addr)
		if addr == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return nil, fmt.Errorf("-nodes: %q is not host:port: %w", addr, err)
		}
		nodes = append(nodes, &node{client: &fasthttp.HostClient{
			Addr:                     addr,
			MaxConns:                 maxConnsPerNode,
			NoDefaultUserAgentHeader: true,
		}})
	}
	if len(nodes) == 0 {
		return nil, errors.New("-nodes is required")
	}
	return nodes, nil
}

// forwardTo returns the handler that sends each request to the node with
// the fewest requests in flight, the first such node on a tie.
func forwardTo(nodes []*node) fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		best := nodes[0]
		for _, n := range nodes[1:] {
			if n.inFlight.Load() < best.inFlight.Load() {
				best = n
			}
		}
		best.inFlight.Add(1)
		err := best.client.Do(&ctx.Request, &ctx.Response)
		best.inFlight.Add(-1)
		if err != nil {
			fmt.Fprintf(os.Stderr, "fasthttpproxy: %s %s to %s failed: %v\n",
				ctx.Method(), ctx.Path(), best.client.Addr, err)
			body, _ := json.Marshal(map[string]string{"error": err.Error()})
			ctx.Response.Reset()
			ctx.SetStatusCode(fasthttp.StatusBadGateway)
			ctx.SetContentType("application/json; charset=utf-8")
			ctx.SetBody(body)
		}
	}
}
