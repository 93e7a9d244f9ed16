// Command llmproxy is an inference-aware reverse proxy and load balancer
// for Ollama servers. Clients see it as one Ollama server.
//
//	llmproxy [serve] [-config FILE]   run the proxy (the default command)
//	llmproxy validate -config FILE    check a configuration and list every problem
//	llmproxy demo                     run the proxy over two simulated nodes
//	llmproxy version                  print the version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/llmproxy/llmproxy/app"
	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/sdnotify"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run executes one command and returns the process exit code.
func run(args []string, stdout, stderr io.Writer) int {
	cmd := "serve"
	if len(args) > 0 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help") {
		usage(stdout)
		return 0
	}
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "serve":
		return serve(args, stderr)
	case "validate":
		return validate(args, stdout, stderr)
	case "demo":
		return demo(args, stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "llmproxy", app.Version)
		return 0
	case "help", "-h", "-help", "--help":
		usage(stdout)
		return 0
	default:
		fmt.Fprintf(stderr, "llmproxy: unknown command %q\n\n", cmd)
		usage(stderr)
		return 2
	}
}

func usage(w io.Writer) {
	fmt.Fprint(w, `Usage:
  llmproxy [serve] [-config FILE]   run the proxy (default command)
  llmproxy validate -config FILE    check a configuration, list every problem and exit 1 if any
  llmproxy demo [-listen ADDR]      run the proxy over two simulated Ollama nodes
  llmproxy version                  print the version

Without -config or LLMPROXY_CONFIG, the environment configures the proxy:
  LLMPROXY_NODES=http://gpu1:11434,http://gpu2:11434   comma-separated node URLs (required)
  LLMPROXY_LISTEN=127.0.0.1:11434                      the listen address
`)
}

func configFlag(name string, args []string, stderr io.Writer) (string, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", os.Getenv("LLMPROXY_CONFIG"),
		"YAML configuration file, overridden by LLMPROXY_* variables. "+
			"If empty, the variables alone configure the proxy")
	if err := fs.Parse(args); err != nil {
		return "", err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "llmproxy %s: unexpected argument %q\n", name, fs.Arg(0))
		return "", fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return *path, nil
}

func validate(args []string, stdout, stderr io.Writer) int {
	path, err := configFlag("validate", args, stderr)
	if err != nil {
		return 2
	}
	cfg, err := config.Load(path)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	for _, w := range cfg.Warnings() {
		fmt.Fprintln(stderr, "warning:", w)
	}
	fmt.Fprintf(stdout, "configuration is valid: %d nodes, listen %s\n", len(cfg.Nodes), cfg.Listen)
	return 0
}

func serve(args []string, stderr io.Writer) int {
	path, err := configFlag("serve", args, stderr)
	if err != nil {
		return 2
	}
	cfg, err := config.Load(path)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	log := newLogger(cfg, stderr)
	redis.SetLogger(newRedisLog(log))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	hup := catchHangup()
	defer signal.Stop(hup)
	defer stop()
	a, err := app.Start(ctx, cfg, log)
	if err != nil {
		log.Error("start failed", "error", err)
		return 1
	}
	if err := sdnotify.Ready(); err != nil {
		log.Warn("systemd readiness notification failed", "error", err)
	}
	return waitAndStop(ctx, a, path, hup, log)
}

// catchHangup returns a channel that receives SIGHUP. The caller sets it
// up before the proxy serves, because SIGHUP's default action ends the
// process and a reload may be requested as soon as the port accepts
// connections.
func catchHangup() chan os.Signal {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	return hup
}

// waitAndStop serves until SIGTERM or SIGINT, reloading on SIGHUP, then
// shuts down gracefully.
func waitAndStop(ctx context.Context, a *app.App, path string, hup <-chan os.Signal, log *slog.Logger) int {
	changed := make(chan struct{}, 1)
	if path != "" {
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		if err := watchConfig(wctx, path, changed, log); err != nil {
			log.Warn("config file watch failed, send SIGHUP to reload",
				"path", path, "error", err)
		}
	}
	for {
		select {
		case <-hup:
			log.Info("reloading on SIGHUP", "path", path)
			reload(ctx, a, path, log)
			continue
		case <-changed:
			log.Info("reloading after the config file changed", "path", path)
			reload(ctx, a, path, log)
			continue
		case <-ctx.Done():
		}
		break
	}
	timeout := a.Config().ShutdownTimeout
	log.Info("shutting down", "timeout", timeout)
	_ = sdnotify.Stopping()
	sctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := a.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		log.Error("shutdown failed", "error", err)
	}
	return 0
}

func reload(ctx context.Context, a *app.App, path string, log *slog.Logger) {
	if path == "" {
		log.Info("reload skipped: no config file, and the environment is read only at start")
		return
	}
	_ = sdnotify.Reloading()
	// systemd waits for READY=1 after RELOADING=1, whatever the outcome.
	defer func() { _ = sdnotify.Ready() }()
	cfg, err := config.Load(path)
	if err != nil {
		log.Error("reload rejected, keeping the running configuration", "error", err)
		return
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := a.Reload(rctx, cfg); err != nil {
		log.Error("reload failed", "error", err)
	}
}

// redisLogInterval is the least time between two warn lines of the Redis
// client. While Redis is down, the client reports each failed dial of its
// pool, dozens per minute, and the proxy already logs the outage itself.
const redisLogInterval = time.Minute

// redisLog sends the Redis client's own messages, such as failed dials,
// to the proxy's log, so that they follow log.format. The client calls it
// only for problems. The first message is logged at warn level, and then
// at most one per redisLogInterval, with the number of messages logged at
// debug level in between.
type redisLog struct {
	log *slog.Logger
	now func() time.Time

	mu         sync.Mutex
	last       time.Time
	suppressed int
}

func newRedisLog(log *slog.Logger) *redisLog {
	return &redisLog{log: log, now: time.Now}
}

func (r *redisLog) Printf(ctx context.Context, format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	r.mu.Lock()
	now := r.now()
	warn := r.last.IsZero() || now.Sub(r.last) >= redisLogInterval
	suppressed := r.suppressed
	if warn {
		r.last, r.suppressed = now, 0
	} else {
		r.suppressed++
	}
	r.mu.Unlock()
	if !warn {
		r.log.DebugContext(ctx, "redis client", "message", msg)
		return
	}
	r.log.WarnContext(ctx, "redis client", "message", msg, "debug_since_last_warn", suppressed)
}

func newLogger(cfg *config.Config, w io.Writer) *slog.Logger {
	level, err := cfg.Log.SlogLevel()
	if err != nil {
		level = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: level}
	if cfg.Log.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
