// Command stampsim runs a simulated Ollama node, the ollamasim package
// behind the same flags as cmd/ollamasim, that also writes into every
// server-sent event the time the node wrote it: "data: {...}" becomes
// `data: {"sent_at":"2026-01-02T03:04:05.123456789Z",...}`. OpenAI
// clients ignore the unknown field. OpenAI chunks carry their time only
// in "created", in whole seconds, so without the stamp a client cannot
// tell how long an SSE chunk took to arrive; NDJSON lines carry
// created_at, which gives that time already.
//
// benchrun starts it in place of ollamasim for the streaming scenario.
// It accepts only the flags the benchmark uses.
//
// Usage:
//
//	stampsim -addr 127.0.0.1:11435 -control-addr 127.0.0.1:11436 -models llama3:8b
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
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
	node := ollamasim.New(opts.cfg)
	defer node.Close()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	servers := []*http.Server{newServer(stampEvents(node), logger)}
	addrs := []string{opts.addr}
	if opts.controlAddr != "" {
		servers = append(servers, newServer(node.ControlHandler(), logger))
		addrs = append(addrs, opts.controlAddr)
	}
	return serve(ctx, servers, addrs)
}

func newServer(h http.Handler, logger *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelDebug),
	}
}

// serve listens on every address, serves until ctx ends, and then shuts
// the servers down.
func serve(ctx context.Context, servers []*http.Server, addrs []string) error {
	done := make(chan error, len(servers))
	for i, srv := range servers {
		ln, err := net.Listen("tcp", addrs[i])
		if err != nil {
			for _, started := range servers[:i] {
				started.Close()
			}
			return fmt.Errorf("listen on %s: %w", addrs[i], err)
		}
		go func() { done <- srv.Serve(ln) }()
	}
	select {
	case <-ctx.Done():
	case err := <-done:
		return err
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, srv := range servers {
		srv.Shutdown(shutdownCtx)
	}
	return nil
}

// stampEvents wraps h so that the events of its SSE responses carry the
// time they were written.
func stampEvents(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(&stampWriter{ResponseWriter: w}, r)
	})
}

// stampWriter adds "sent_at" to each "data: {" event written to an
// event stream. ollamasim writes each event with one Write call.
type stampWriter struct {
	http.ResponseWriter
	buf []byte
}

var eventStart = []byte("data: {")

func (w *stampWriter) Write(p []byte) (int, error) {
	ct := w.Header().Get("Content-Type")
	if !strings.HasPrefix(ct, "text/event-stream") || !bytes.HasPrefix(p, eventStart) {
		return w.ResponseWriter.Write(p)
	}
	rest := p[len(eventStart):]
	w.buf = append(w.buf[:0], eventStart...)
	w.buf = append(w.buf, `"sent_at":"`...)
	w.buf = time.Now().UTC().AppendFormat(w.buf, time.RFC3339Nano)
	w.buf = append(w.buf, '"')
	if len(rest) > 0 && rest[0] != '}' {
		w.buf = append(w.buf, ',')
	}
	w.buf = append(w.buf, rest...)
	if _, err := w.ResponseWriter.Write(w.buf); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Flush sends the buffered event to the client. ollamasim flushes after
// every event.
func (w *stampWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap returns the wrapped writer for http.ResponseController.
func (w *stampWriter) Unwrap() http.ResponseWriter {
	return w.ResponseWriter
}
