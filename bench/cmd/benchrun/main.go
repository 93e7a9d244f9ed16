// Command benchrun measures llmproxy against a direct connection, nginx
// and HAProxy in front of simulated Ollama nodes on 127.0.0.1, and writes
// the results as Markdown. The scenarios are listed by scenario.All. make
// bench and make bench-quick run it through bench/run.sh, which installs
// nginx, HAProxy and redis-server and raises the open-file limit first.
//
// Usage:
//
//	benchrun [-quick] [-bin DIR] [-out FILE] [-targets LIST] [-scenarios LIST] [-go CMD]
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
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/llmproxy/llmproxy/bench/harness"
	"github.com/llmproxy/llmproxy/bench/report"
	"github.com/llmproxy/llmproxy/bench/scenario"
)

// options are the parsed command-line flags.
type options struct {
	quick     bool
	binDir    string
	out       string
	runDir    string
	command   string
	profile   bool
	scenarios []string
	verbose   bool
	settings  scenario.Settings
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "benchrun:", err)
		}
		os.Exit(1)
	}
}

func run(args []string) error {
	opts, err := parseFlags(args, os.Stderr)
	if err != nil {
		return err
	}
	level := slog.LevelInfo
	if opts.verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	env, err := harness.NewEnv(opts.binDir, opts.runDir, log)
	if err != nil {
		return err
	}
	defer env.StopAll()
	if opts.profile {
		if env.ProfileDir, err = profileDir(); err != nil {
			return err
		}
	}

	doc, err := measure(ctx, env, opts)
	if err != nil {
		return err
	}
	return writeReport(doc, opts.out)
}

// profileDir empties and returns the folder of CPU profiles.
func profileDir() (string, error) {
	dir, err := filepath.Abs("bench/out/profiles")
	if err != nil {
		return "", fmt.Errorf("resolve profile folder: %w", err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return "", fmt.Errorf("clear profile folder: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create profile folder: %w", err)
	}
	return dir, nil
}

// measure runs the selected scenarios and builds the document.
func measure(ctx context.Context, env *harness.Env, opts options) (*report.Document, error) {
	r := &scenario.Run{Env: env, Settings: opts.settings}
	doc := newDocument(opts)
	for _, s := range scenario.All() {
		if !selected(s, opts) {
			continue
		}
		start := time.Now()
		env.Log.Info("scenario started", "name", s.Name)
		section, err := s.Run(ctx, r)
		if err != nil {
			return nil, fmt.Errorf("scenario %s: %w (logs in %s)", s.Name, err, env.Dir)
		}
		env.Log.Info("scenario done", "name", s.Name, "elapsed", time.Since(start).Round(time.Second))
		doc.Sections = append(doc.Sections, section)
	}
	doc.Goals = r.Goals()
	return doc, nil
}

func selected(s scenario.Scenario, opts options) bool {
	if len(opts.scenarios) > 0 {
		return slices.Contains(opts.scenarios, s.Name)
	}
	return s.Quick || !opts.quick
}

// writeReport prints the document and writes it to path unless path is empty.
func writeReport(doc *report.Document, path string) error {
	text := doc.Markdown()
	fmt.Print(text)
	if path == "" {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create folder of %s: %w", path, err)
	}
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	fmt.Fprintln(os.Stderr, "benchrun: wrote", path)
	return nil
}

// overrides are the flags that change the default settings. Their zero
// values keep the defaults.
type overrides struct {
	targets   string
	scenarios string
	streams   string
	rate      float64
	rounds    int
	goTool    string
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	var ov overrides
	fs := flag.NewFlagSet("benchrun", flag.ContinueOnError)
	fs.SetOutput(stderr)

	fs.BoolVar(&o.quick, "quick", false,
		"run the short set: shorter phases, 100 streams, no HAProxy, no scheduler trace\n"+
			"and no Go benchmarks")
	fs.StringVar(&o.binDir, "bin", "bin", "`folder` containing the llmproxy, ollamasim, stampsim and fasthttpproxy binaries")
	fs.StringVar(&o.out, "out", "", "Markdown `file` to write, or empty to print the report only")
	fs.StringVar(&o.runDir, "run-dir", "bench/out/run",
		"`folder` for generated configs and process logs, emptied first")
	fs.StringVar(&o.command, "command", "", "command shown in the report (default: this command line)")
	fs.BoolVar(&o.profile, "profile", false,
		"run llmproxy as llmproxyprof (built next to benchrun) and save a CPU profile of each\n"+
			"measured llmproxy phase in bench/out/profiles")
	fs.BoolVar(&o.verbose, "v", false, "log every process started")

	fs.StringVar(&ov.targets, "targets", "", "comma-separated target `list` from "+
		strings.Join(harness.Kinds, ",")+" (default: all, or direct,llmproxy,nginx with -quick)")
	fs.StringVar(&ov.scenarios, "scenarios", "",
		"comma-separated scenario `list` from "+strings.Join(scenarioNames(), ",")+
			" (default: all, or those of the short set with -quick)")
	fs.StringVar(&ov.goTool, "go", "", "go `command` that runs the Go benchmarks (default: go)")
	fs.StringVar(&ov.streams, "streams", "",
		"comma-separated `numbers` of concurrent streams (default: 100,1000, or 100 with -quick)")
	fs.Float64Var(&ov.rate, "rate", 0, "requests per second of the fixed-rate phase (default: 2000)")
	fs.IntVar(&ov.rounds, "rounds", 0,
		"times each phase runs per target (default: 2, or 1 with -quick)")

	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	if o.command == "" {
		o.command = strings.Join(append([]string{"benchrun"}, args...), " ")
	}
	o.settings = scenario.DefaultSettings(o.quick)
	return o, o.apply(ov)
}

// apply checks the overrides and applies those that were set.
func (o *options) apply(ov overrides) error {
	if err := o.applyNames(ov.targets, ov.scenarios); err != nil {
		return err
	}
	if ov.streams != "" {
		levels, err := parseLevels(ov.streams)
		if err != nil {
			return err
		}
		o.settings.StreamLevels = levels
	}
	if ov.rate < 0 {
		return fmt.Errorf("-rate: %g is negative, want a rate above 0", ov.rate)
	}
	if ov.rate > 0 {
		o.settings.Rate = ov.rate
	}
	if ov.rounds < 0 {
		return fmt.Errorf("-rounds: %d is negative, want 1 or more", ov.rounds)
	}
	if ov.rounds > 0 {
		o.settings.Rounds = ov.rounds
	}
	if ov.goTool != "" {
		o.settings.GoTool = ov.goTool
	}
	return nil
}

// applyNames checks and applies the lists of targets and scenarios.
func (o *options) applyNames(targets, scenarios string) error {
	if targets != "" {
		o.settings.Targets = splitList(targets)
		for _, t := range o.settings.Targets {
			if !slices.Contains(harness.Kinds, t) {
				return fmt.Errorf("-targets: unknown target %q, want one of %s",
					t, strings.Join(harness.Kinds, ","))
			}
		}
	}
	if scenarios == "" {
		return nil
	}
	o.scenarios = splitList(scenarios)
	for _, name := range o.scenarios {
		if !slices.Contains(scenarioNames(), name) {
			return fmt.Errorf("-scenarios: unknown scenario %q, want one of %s",
				name, strings.Join(scenarioNames(), ","))
		}
	}
	return nil
}

// scenarioNames returns the names of every scenario in report order.
func scenarioNames() []string {
	var names []string
	for _, s := range scenario.All() {
		names = append(names, s.Name)
	}
	return names
}

func parseLevels(list string) ([]int, error) {
	var levels []int
	for _, s := range splitList(list) {
		var n int
		if _, err := fmt.Sscan(s, &n); err != nil || n <= 0 {
			return nil, fmt.Errorf("-streams: %q is not a positive number", s)
		}
		levels = append(levels, n)
	}
	return levels, nil
}

func splitList(s string) []string {
	var out []string
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}
