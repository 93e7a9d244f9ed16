// Command loadgen sends one load phase to running servers and prints its
// summary: a closed loop, an open loop at a fixed rate, or concurrent
// streams. It starts no server. benchrun uses the same package for the
// full comparison.
//
// Usage:
//
//	loadgen -mode closed -url http://127.0.0.1:11434 -conns 64 -duration 10s
//	loadgen -mode open -url http://127.0.0.1:11434 -rate 2000 -duration 10s
//	loadgen -mode stream -format sse -url http://127.0.0.1:11434 -streams 100
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/llmproxy/llmproxy/bench/loadgen"
)

// options are the parsed command-line flags.
type options struct {
	mode     string
	urls     []string
	model    string
	format   string
	conns    int
	rate     float64
	streams  int
	duration time.Duration
	ramp     time.Duration
}

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "loadgen:", err)
		}
		os.Exit(1)
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch o.mode {
	case "closed", "open":
		return runRequests(ctx, o, stdout)
	case "stream":
		return runStreams(ctx, o, stdout)
	default:
		return fmt.Errorf("-mode: %q is invalid, want closed, open or stream", o.mode)
	}
}

func runRequests(ctx context.Context, o options, stdout io.Writer) error {
	req := loadgen.Request{
		Path: "/api/generate",
		Body: []byte(`{"model":"` + o.model + `","prompt":"Why is the sky blue?",` +
			`"stream":false,"options":{"num_predict":8}}`),
	}
	client, err := loadgen.NewClient(o.urls, max(o.conns, 256))
	if err != nil {
		return err
	}
	defer client.Close()
	var res loadgen.Result
	if o.mode == "closed" {
		cfg := loadgen.ClosedLoop{Conns: o.conns, Duration: o.duration, Request: req}
		res = loadgen.RunClosed(ctx, client, cfg)
	} else {
		cfg := loadgen.OpenLoop{Rate: o.rate, Duration: o.duration, Workers: 256, Request: req}
		res = loadgen.RunOpen(ctx, client, cfg)
	}
	fmt.Fprintf(stdout, "requests %d, errors %d, %.0f requests/s\n",
		res.Requests, res.Errors, res.Throughput())
	printSummary(stdout, "latency", res.Latency)
	if res.FirstError != "" {
		fmt.Fprintln(stdout, "first error:", res.FirstError)
	}
	return nil
}

func runStreams(ctx context.Context, o options, stdout io.Writer) error {
	load := loadgen.StreamLoad{
		URLs: o.urls, Format: loadgen.NDJSON, Path: "/api/chat",
		Body: []byte(`{"model":"` + o.model + `",` +
			`"messages":[{"role":"user","content":"Tell me a story."}]}`),
		Streams: o.streams, Ramp: o.ramp, Duration: o.duration,
	}
	if o.format == "sse" {
		load.Format, load.Path = loadgen.SSE, "/v1/chat/completions"
		load.Body = []byte(`{"model":"` + o.model + `","stream":true,` +
			`"messages":[{"role":"user","content":"Tell me a story."}]}`)
	}
	res := loadgen.RunStreams(ctx, load)
	fmt.Fprintf(stdout, "streams %d, chunks %d (%.0f/s), errors %d\n",
		res.Streams, res.Chunks, float64(res.Chunks)/res.Window.Seconds(), res.Errors)
	printSummary(stdout, "TTFB", res.TTFB)
	printSummary(stdout, "chunk latency", res.ChunkLatency)
	printSummary(stdout, "gap", res.Gap)
	if res.FirstError != "" {
		fmt.Fprintln(stdout, "first error:", res.FirstError)
	}
	return nil
}

func printSummary(w io.Writer, name string, s loadgen.Summary) {
	fmt.Fprintf(w, "%-14s n=%d mean=%v p50=%v p90=%v p99=%v p99.9=%v max=%v\n",
		name, s.Count, s.Mean, s.P50, s.P90, s.P99, s.P999, s.Max)
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	var urls string
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	fs.SetOutput(stderr)

	fs.StringVar(&o.mode, "mode", "closed", "load `pattern`: closed, open or stream")
	fs.StringVar(&urls, "url", "http://127.0.0.1:11434",
		"comma-separated base `URLs`, which requests take in turn")
	fs.StringVar(&o.model, "model", "llama3:8b", "model `name` in every request")
	fs.StringVar(&o.format, "format", "ndjson",
		"stream `format`: ndjson (/api/chat) or sse (/v1/chat/completions)")

	fs.IntVar(&o.conns, "conns", 64, "connections of the closed loop")
	fs.Float64Var(&o.rate, "rate", 1000, "requests per second of the open loop")
	fs.IntVar(&o.streams, "streams", 100, "concurrent streams")
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "measured `time`")
	fs.DurationVar(&o.ramp, "ramp", time.Second, "`time` over which streams start, not measured")

	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}

	for _, u := range strings.Split(urls, ",") {
		if u = strings.TrimSpace(u); u != "" {
			o.urls = append(o.urls, u)
		}
	}
	if o.format != "ndjson" && o.format != "sse" {
		return o, fmt.Errorf("-format: %q is invalid, want ndjson or sse", o.format)
	}
	return o, nil
}
