// Command stampsim runs a simulated Ollama node for the streaming benchmark.
// It serves the ollamasim package behind the same flags as cmd/ollamasim.
// Streamed chat completions take a path of its own that costs little CPU
// per chunk, because on a benchmark machine the nodes share the CPU with
// the proxies under test.
//
// # Streams
//
// POST /api/chat (unless "stream" is false) and POST /v1/chat/completions
// with "stream":true take the lean path when nothing in the request needs
// the full simulation. One pacer goroutine owns every stream: it sleeps
// until the next chunk is due and writes each due chunk to its socket with
// one write system call that never blocks. Each chunk is built by
// appending bytes, without encoding/json. The text is the node's own token
// stream, 20 to 40 tokens, cut at num_predict or max_tokens (done_reason
// "length").
//
// The first chunk is due one token time (1 / -tokens-per-sec) after the
// request, plus the prompt evaluation time at -prompt-tokens-per-sec, and
// each next chunk one token time after the previous one was due, so a
// stream keeps its token rate. The pacer wakes at most once a millisecond
// and then writes every chunk due before its next wake, so a chunk may go
// out up to 1 ms early.
//
// While a stream runs, its connection's goroutine already waits for the
// next request, so a client that closes its connection ends its stream
// before the next chunk. A client that stops reading until the socket
// buffers are full loses its stream too: the node closes the connection
// and logs it. /_sim/stats counts both as cancelled.
//
// The node runs with GOMAXPROCS 1 unless the GOMAXPROCS environment
// variable is set, and it reads and writes its data port's sockets with
// raw system calls. Both keep Go's scheduler and its system monitor thread
// from waking for each chunk. In a CPU profile of a node on the streaming
// benchmark, those wakes took more time than building the chunks.
//
// The wire format is Ollama's, as ollamasim writes it: the same status
// line, headers, chunk framing, field order and final line or events.
// Every SSE event that carries an object also carries the time the node
// wrote it: "data: {" becomes `data: {"sent_at":"2026-01-02T03:04:05.123456789Z",`.
// OpenAI clients ignore the unknown field. OpenAI chunks carry their time
// only in "created", in whole seconds, so without the stamp a client
// cannot tell how long an SSE chunk took to arrive. NDJSON lines carry
// created_at, which gives that time already.
//
// A streamed chat request goes through ollamasim instead when its model is
// unknown, embedding-only or not loaded with the default num_ctx. So does
// a request that comes while a fault is set, and one with an Origin header
// or a Host the node rejects. The same goes for a request that sets
// format, tools, keep_alive, a seed, a temperature of 0 or num_ctx, a
// response_format other than text, or message content that is not a
// string. ollamasim then writes its usual
// response, errors included.
//
// # Everything else
//
// The data port is a small HTTP/1.1 server of this package, with
// keep-alive, Connection: close and HTTP/1.0. Every other request, such as
// GET /api/tags, a request with "stream":false or POST /api/generate, is
// served by the ollamasim handler through a response writer that follows
// net/http's rules for Content-Length, chunking and Connection. The
// -control-addr listener is a net/http server of the /_sim/ routes.
//
// # Limits of the lean path
//
// Lean streams have their own slots: -parallel per model and one queue of
// -max-queue requests, past which a request gets Ollama's 503 "server
// busy". They do not use ollamasim's scheduler, so they take no slot
// there, keep no prompt cache, reset no keep_alive timer and cannot stop
// the model from being evicted. Their prompt_eval_count is the whole
// prompt, as on a cold slot. GET /_sim/stats adds them to requests,
// model_requests, cancelled, rejected, in_flight, active and waiting; no
// benchmark scenario reads those counters for the streaming nodes.
//
// benchrun starts stampsim in place of ollamasim for the streaming
// scenario. It accepts only the flags the benchmark uses.
//
// Usage:
//
//	stampsim -addr 127.0.0.1:11435 -control-addr 127.0.0.1:11436 -models llama3:8b
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/llmproxy/llmproxy/ollamasim"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "stampsim:", err)
		}
		os.Exit(2)
	}
}

// options are the parsed command-line flags.
type options struct {
	addr, controlAddr, models, logLevel string
	cfg                                 ollamasim.Config
}

func parseFlags(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("stampsim", flag.ContinueOnError)
	fs.StringVar(&o.addr, "addr", "127.0.0.1:11435", "`address` to listen on")
	fs.StringVar(&o.controlAddr, "control-addr", "",
		"extra `address` serving only the /_sim/ control routes")
	fs.StringVar(&o.models, "models", "llama3:8b", "comma-separated `list` of models")
	fs.IntVar(&o.cfg.Parallel, "parallel", 4, "slots per loaded model")
	fs.IntVar(&o.cfg.MaxQueue, "max-queue", 512, "requests that may wait for a slot before 503")
	fs.IntVar(&o.cfg.MaxLoaded, "max-loaded", 3, "models loaded at once")
	fs.DurationVar(&o.cfg.LoadTime, "load-time", 500*time.Millisecond, "cold load `duration`")
	fs.DurationVar(&o.cfg.KeepAlive, "keep-alive", 5*time.Minute,
		"default keep_alive `duration`; negative keeps models loaded forever")
	fs.Float64Var(&o.cfg.TokensPerSec, "tokens-per-sec", 40,
		"generation speed in tokens per second; 0 means unpaced")
	fs.Float64Var(&o.cfg.PromptTokensPerSec, "prompt-tokens-per-sec", 400,
		"prompt evaluation speed in tokens per second; 0 means unpaced")
	fs.StringVar(&o.logLevel, "log-level", "info", "log `level`: debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	models, err := ollamasim.ParseModels(o.models)
	if err != nil {
		return o, fmt.Errorf("-models: %w", err)
	}
	o.cfg.Models = models
	return o, nil
}

func run(args []string) error {
	opts, err := parseFlags(args)
	if err != nil {
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(opts.logLevel)); err != nil {
		return fmt.Errorf("-log-level: %w", err)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	opts.cfg.Logger = logger
	if err := opts.cfg.Validate(); err != nil {
		return fmt.Errorf("invalid flags: %w", err)
	}
	// One goroutine writes every chunk, so the node needs one CPU at a
	// time. A single P also spares Go's scheduler from waking a second
	// thread each time the pacer or a connection wakes.
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}
	node := ollamasim.New(opts.cfg)
	defer node.Close()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return serve(ctx, newServer(node, opts.cfg, logger), opts.addr, opts.controlAddr)
}

// serve listens on addr, and on controlAddr unless it is empty, serves
// until ctx ends, and then shuts both servers down.
func serve(ctx context.Context, srv *server, addr, controlAddr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", addr, err)
	}
	done := make(chan error, 2)
	go func() { done <- srv.serve(ln) }()
	defer srv.close()

	if controlAddr != "" {
		controlLn, err := net.Listen("tcp", controlAddr)
		if err != nil {
			return fmt.Errorf("listen on %s: %w", controlAddr, err)
		}
		control := &http.Server{
			Handler:           srv.withLeanStats(srv.node.ControlHandler()),
			ReadHeaderTimeout: readHeaderTimeout,
			ErrorLog:          slog.NewLogLogger(srv.log.Handler(), slog.LevelDebug),
		}
		go func() { done <- control.Serve(controlLn) }()
		defer func() {
			shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			control.Shutdown(shutdownCtx)
		}()
	}

	select {
	case <-ctx.Done():
		return nil
	case err := <-done:
		return err
	}
}
