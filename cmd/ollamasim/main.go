// Command ollamasim runs a simulated Ollama server: the Ollama and OpenAI
// APIs with paced, deterministic text, slots, a queue, model loads and
// fault injection, with no GPU and no model files.
//
// Usage:
//
//	ollamasim -addr 127.0.0.1:11435 -models llama3:8b=4.7,nomic-embed-text
//
// The control routes (GET/POST/DELETE /_sim/faults, GET /_sim/stats) are
// served on -addr and, when set, on -control-addr, which stays reachable
// while the node refuses connections.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
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

// options are the parsed command-line flags.
type options struct {
	addr        string
	controlAddr string
	models      string
	registry    string
	logLevel    string
	logFormat   string
	cfg         ollamasim.Config
}

func main() {
	err := run(os.Args[1:], os.Stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
		os.Exit(0)
	case err != nil:
		fmt.Fprintln(os.Stderr, "ollamasim:", err)
		os.Exit(2)
	}
}

func run(args []string, stderr io.Writer) error {
	opts, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	logger, err := newLogger(stderr, opts.logLevel, opts.logFormat)
	if err != nil {
		return err
	}
	opts.cfg.Logger = logger
	if err := opts.cfg.Validate(); err != nil {
		return fmt.Errorf("invalid flags: %w", err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return serve(ctx, opts, logger)
}

// serve runs the node and the optional control listener until ctx ends.
func serve(ctx context.Context, opts options, logger *slog.Logger) error {
	srv := ollamasim.New(opts.cfg)
	running, err := srv.Start(opts.addr)
	if err != nil {
		return err
	}
	logger.Info("ollamasim started", "url", running.URL(), "models", opts.models)

	var control *http.Server
	controlDone := make(chan error, 1)
	if opts.controlAddr != "" {
		ln, err := net.Listen("tcp", opts.controlAddr)
		if err != nil {
			running.Close()
			return fmt.Errorf("listen on control address %s: %w", opts.controlAddr, err)
		}
		control = &http.Server{Handler: srv.ControlHandler(), ReadHeaderTimeout: 10 * time.Second}
		go func() { controlDone <- control.Serve(ln) }()
		logger.Info("control routes listening", "addr", ln.Addr().String())
	}

	<-ctx.Done()
	logger.Info("shutting down")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if control != nil {
		control.Shutdown(shutdownCtx)
		<-controlDone
	}
	if err := running.Shutdown(shutdownCtx); err != nil {
		return err
	}
	logger.Info("stopped")
	return nil
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	var faults ollamasim.Faults
	fs := flag.NewFlagSet("ollamasim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: ollamasim [flags]\n\nRuns a simulated Ollama server.\n\nFlags:")
		fs.PrintDefaults()
	}

	fs.StringVar(&o.addr, "addr", "127.0.0.1:11435", "`address` to listen on")
	fs.StringVar(&o.controlAddr, "control-addr", "",
		"extra `address` serving only the /_sim/ control routes, reachable while -refuse is on")
	fs.StringVar(&o.models, "models", "llama3:8b,qwen2.5:7b,nomic-embed-text",
		"comma-separated `list` of models present on the node: name or name=sizeGB;\n"+
			"a name containing \"embed\" is an embedding-only model")
	fs.StringVar(&o.registry, "registry", "",
		"comma-separated `list` of models /api/pull can fetch; empty means any name")
	fs.IntVar(&o.cfg.Parallel, "parallel", 4, "slots per loaded model (OLLAMA_NUM_PARALLEL)")
	fs.IntVar(&o.cfg.MaxQueue, "max-queue", 512,
		"requests that may wait for a slot before 503 (OLLAMA_MAX_QUEUE); negative means none")
	fs.IntVar(&o.cfg.MaxLoaded, "max-loaded", 3, "models loaded at once (OLLAMA_MAX_LOADED_MODELS)")
	fs.DurationVar(&o.cfg.LoadTime, "load-time", 500*time.Millisecond, "cold load `duration`")
	fs.DurationVar(&o.cfg.PullTime, "pull-time", 2*time.Second, "`duration` of an /api/pull")
	fs.Float64Var(&o.cfg.TokensPerSec, "tokens-per-sec", 40, "generation speed in tokens per second; 0 means unpaced")
	fs.Float64Var(&o.cfg.PromptTokensPerSec, "prompt-tokens-per-sec", 400,
		"prompt evaluation speed in tokens per second; 0 means unpaced")
	fs.DurationVar(&o.cfg.KeepAlive, "keep-alive", 5*time.Minute,
		"default keep_alive `duration`; negative keeps models loaded forever")
	fs.IntVar(&o.cfg.ContextLength, "context-length", ollamasim.DefaultContextLength,
		"num_ctx of requests that set none (OLLAMA_CONTEXT_LENGTH)")
	fs.StringVar(&o.cfg.Version, "version", ollamasim.DefaultVersion,
		"version reported by /api/version")
	fs.Uint64Var(&o.cfg.Seed, "seed", 0, "seed of non-deterministic completions")
	fs.BoolVar(&o.cfg.SkipChecks, "skip-checks", false,
		"skip the checks of request bodies that Ollama makes before the model lookup, for benchmarks")
	fs.StringVar(&o.logLevel, "log-level", "info", "log `level`: debug, info, warn or error")
	fs.StringVar(&o.logFormat, "log-format", "text", "log `format`: text or json")

	fs.BoolVar(&faults.Refuse, "refuse", false, "fault: refuse connections")
	fs.BoolVar(&faults.Hang, "hang", false, "fault: accept requests and never respond")
	fs.BoolVar(&faults.Busy, "busy", false, "fault: fail inference requests with 503 server busy")
	fs.Float64Var(&faults.ErrorRate, "error-rate", 0,
		"fault: share (0..1) of inference requests that fail")
	fs.IntVar(&faults.ErrorStatus, "error-status", 500, "fault: status of failed requests")
	fs.StringVar(&faults.ErrorMessage, "error-message", "", "fault: error text of failed requests")
	fs.Uint64Var(&faults.Seed, "fault-seed", 0, "fault: seed of the -error-rate draws")
	fs.IntVar(&faults.CutAfterChunks, "cut-after", 0,
		"fault: close streams abruptly after this many chunks; 0 never cuts")
	fs.DurationVar(&faults.FirstByteDelay, "first-byte-delay", 0,
		"fault: extra delay before each inference response")
	fs.DurationVar(&faults.TokenDelay, "token-delay", 0, "fault: extra delay per generated token")
	fs.DurationVar(&faults.ClearAfter, "clear-faults-after", 0,
		"clear the fault flags after this `duration`; 0 keeps them")

	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	return o, o.complete(faults)
}

// complete fills the parts of the config that flags give as lists.
func (o *options) complete(faults ollamasim.Faults) error {
	models, err := ollamasim.ParseModels(o.models)
	if err != nil {
		return fmt.Errorf("-models: %w", err)
	}
	o.cfg.Models = models
	if o.registry != "" {
		pullable, err := ollamasim.ParseModels(o.registry)
		if err != nil {
			return fmt.Errorf("-registry: %w", err)
		}
		o.cfg.Registry = make(map[string]ollamasim.ModelSpec, len(pullable))
		for _, spec := range pullable {
			o.cfg.Registry[spec.Name] = spec
		}
	}
	o.cfg.Faults = faults
	return nil
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("-log-level: %w", err)
	}
	handlerOpts := &slog.HandlerOptions{Level: l}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, handlerOpts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, handlerOpts)), nil
	default:
		return nil, fmt.Errorf("-log-format: %q is not text or json", format)
	}
}
