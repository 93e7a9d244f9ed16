package scenario

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"fmt"
	"math"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"

	"github.com/llmproxy/llmproxy/bench/report"
)

// goBenchCommands are the Go benchmarks of the hot path: the rate limit
// check, alone and against Redis (the benchmark starts its own
// redis-server), then request classification, the stream relay (line
// by line, and one chunk through an event loop on loopback TCP),
// placement, the cache key and a whole request through a proxy.
var goBenchCommands = [][]string{
	{"test", "-run", "xxx", "-bench", "BenchmarkAdmit", "-benchtime", "20000x", "./ratelimit"},
	{"test", "-run", "xxx", "-bench", ".", "-benchtime", "20000x", "./proxy", "./balancer", "./cache",
		"./internal/streamloop"},
}

// goBenchLine is one result line of go test -bench.
type goBenchLine struct {
	pkg, name                   string
	nsPerOp, bytesPerOp, allocs string
}

// runGoBench runs each hot-path Go benchmark command Settings.GoBenchRuns
// times and reports, per benchmark, the median ns/op with the fastest and
// slowest run, and the memory cost. The output of each run is saved in the
// run folder.
func runGoBench(ctx context.Context, r *Run) (report.Section, error) {
	runs := max(r.Settings.GoBenchRuns, 1)
	results := map[string][]goBenchLine{}
	var order, commands []string
	for i, args := range goBenchCommands {
		for run := range runs {
			if err := waitQuiet(ctx, r); err != nil {
				return report.Section{}, err
			}
			log := r.Env.Path(fmt.Sprintf("gobench-%d-run%d.log", i+1, run+1))
			out, err := runGoTest(ctx, r.Settings.GoTool, args, log)
			if err != nil {
				return report.Section{}, err
			}
			for _, l := range parseGoBench(out) {
				key := l.pkg + " " + l.name
				if len(results[key]) == 0 {
					order = append(order, key)
				}
				results[key] = append(results[key], l)
			}
		}
		commands = append(commands, "`go "+strings.Join(args, " ")+"`")
	}
	return report.Section{
		Title:  "Limit check cost and hot-path Go benchmarks",
		Intro:  goBenchIntro(commands, runs),
		Tables: []report.Table{goBenchTable(order, results)},
	}, nil
}

// runGoTest runs go with args, saves its output in log and returns its
// standard output.
func runGoTest(ctx context.Context, goTool string, args []string, log string) (string, error) {
	cmd := exec.CommandContext(ctx, goTool, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if werr := os.WriteFile(log, append(stdout.Bytes(), stderr.Bytes()...), 0o644); werr != nil {
		return "", fmt.Errorf("save go test output: %w", werr)
	}
	if err != nil {
		return "", fmt.Errorf("go %s: %w (output in %s)", strings.Join(args, " "), err, log)
	}
	return stdout.String(), nil
}

func goBenchIntro(commands []string, runs int) string {
	return "The runner runs " + strings.Join(commands, " and ") + fmt.Sprintf(" %d times "+
		"each from the repository root, with the Go toolchain listed above, after the "+
		"load scenarios. The table shows per benchmark the median ns/op of the runs, "+
		"the fastest and slowest run, and B/op and allocs/op of the median run. "+
		"BenchmarkAdmitLocal is one admission and its settlement of an API key with "+
		"every limit set, against the in-process limiter. BenchmarkAdmitRedis is the "+
		"same against a redis-server on 127.0.0.1 that the benchmark starts, so its "+
		"time includes the round trips over loopback. The other rows are request "+
		"classification (BenchmarkClassifyInspect), one streamed line through the "+
		"relay (BenchmarkRelayLine), the token counts read from a final response "+
		"object (BenchmarkScanFinal), a slot taken and given back on the balancer "+
		"(BenchmarkAcquireRelease), the cache key of a request (BenchmarkKey), and "+
		"one non-streamed POST /api/generate over loopback, straight to a simulated "+
		"node, through a whole proxy and through a bare fasthttp proxy "+
		"(BenchmarkForwardGenerate/direct, /proxy and /fasthttp). "+
		"The node and the client of that benchmark run in the same process, so the "+
		"difference between the direct and proxy rows is the proxy's cost per request, "+
		"in time and in allocations, and the difference between the fasthttp and proxy "+
		"rows the part of it that llmproxy's own handling adds.\n", runs)
}

// goBenchTable shows each benchmark's runs in the order first seen.
func goBenchTable(order []string, results map[string][]goBenchLine) report.Table {
	t := report.Table{
		Title: "Cost per operation",
		Header: []string{"package", "benchmark", "ns/op (median)", "ns/op range", "B/op",
			"allocs/op"},
	}
	for _, key := range order {
		runs := results[key]
		slices.SortFunc(runs, func(a, b goBenchLine) int {
			return cmp.Compare(parseNs(a.nsPerOp), parseNs(b.nsPerOp))
		})
		median := runs[(len(runs)-1)/2]
		t.Rows = append(t.Rows, []string{
			median.pkg, median.name, median.nsPerOp,
			runs[0].nsPerOp + "–" + runs[len(runs)-1].nsPerOp,
			median.bytesPerOp, median.allocs,
		})
	}
	return t
}

// parseNs returns the value of an ns/op cell, or +Inf when it is missing.
func parseNs(cell string) float64 {
	v, err := strconv.ParseFloat(cell, 64)
	if err != nil {
		return math.Inf(1)
	}
	return v
}

// parseGoBench reads the result lines of go test -bench output, such as
// "BenchmarkKey-2  20000  3392 ns/op  128.53 MB/s  808 B/op  19 allocs/op",
// with the package of the "pkg:" line before them.
func parseGoBench(out string) []goBenchLine {
	var lines []goBenchLine
	pkg := ""
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		text := sc.Text()
		if p, ok := strings.CutPrefix(text, "pkg: "); ok {
			pkg = strings.TrimPrefix(strings.TrimSpace(p), "github.com/llmproxy/llmproxy/")
			continue
		}
		fields := strings.Fields(text)
		if len(fields) < 4 || !strings.HasPrefix(fields[0], "Benchmark") {
			continue
		}
		l := goBenchLine{pkg: pkg, name: fields[0], nsPerOp: report.NA, bytesPerOp: report.NA,
			allocs: report.NA}
		// Values come before their units: "3392 ns/op".
		for i := 2; i+1 < len(fields); i++ {
			switch fields[i+1] {
			case "ns/op":
				l.nsPerOp = fields[i]
			case "B/op":
				l.bytesPerOp = fields[i]
			case "allocs/op":
				l.allocs = fields[i]
			}
		}
		lines = append(lines, l)
	}
	return lines
}
