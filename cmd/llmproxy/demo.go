package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os/signal"
	"syscall"
	"time"

	"github.com/llmproxy/llmproxy/app"
	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/ollamasim"
)

// demoNodes are the two simulated nodes of the demo. Each has a model that
// the other lacks, and both have llama3.2:1b, so that routing by model and
// by load can both be seen.
var demoNodes = []struct {
	name   string
	models string
}{
	{"sim-a", "llama3.2:1b,nomic-embed-text"},
	{"sim-b", "llama3.2:1b,qwen2.5:0.5b"},
}

// demo runs the proxy over two in-process simulated Ollama nodes, so
// that llmproxy can be tried without a GPU or a real Ollama.
func demo(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:11434", "address the proxy listens on")
	tps := fs.Float64("tokens-per-sec", 40, "generation speed of the simulated nodes, in tokens per second")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	hup := catchHangup()
	defer signal.Stop(hup)

	cfg := config.Default()
	cfg.Listen = *listen
	cfg.Nodes = nil
	var sims []*ollamasim.Running
	defer func() {
		for _, s := range sims {
			_ = s.Close()
		}
	}()
	for _, n := range demoNodes {
		sim, err := startSimNode(n.models, *tps, log.With("node", n.name))
		if err != nil {
			log.Error("simulated node start failed", "node", n.name, "error", err)
			return 1
		}
		sims = append(sims, sim)
		node := config.DefaultNode(sim.URL())
		node.Name = n.name
		cfg.Nodes = append(cfg.Nodes, node)
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	a, err := app.Start(ctx, &cfg, log)
	if err != nil {
		log.Error("start failed", "error", err)
		return 1
	}
	printDemoHelp(stdout, a.URL())
	return waitAndStop(ctx, a, "", hup, log)
}

// startSimNode serves a simulated Ollama node on a free loopback port.
func startSimNode(models string, tps float64, log *slog.Logger) (*ollamasim.Running, error) {
	specs, err := ollamasim.ParseModels(models)
	if err != nil {
		return nil, err
	}
	sim := ollamasim.New(ollamasim.Config{
		Models:       specs,
		Parallel:     2,
		LoadTime:     1500 * time.Millisecond,
		TokensPerSec: tps,
		Logger:       log,
	})
	return sim.Start("127.0.0.1:0")
}

func printDemoHelp(w io.Writer, url string) {
	fmt.Fprintf(w, `
llmproxy demo is serving on %[1]s over two simulated Ollama nodes.

Try it:
  curl %[1]s/api/tags
  curl %[1]s/api/chat -d '{"model":"llama3.2:1b","messages":[{"role":"user","content":"Hello"}]}'
  OLLAMA_HOST=%[1]s ollama run llama3.2:1b
  curl %[1]s/admin/nodes

Press Ctrl-C to stop.
`, url)
}
