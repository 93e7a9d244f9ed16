package scenario

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"

	"github.com/llmproxy/llmproxy/bench/report"
)

// goBenchCommands are the Go benchmarks of the hot path: the rate limit
// check, alone and against Redis (the benchmark starts its own
// redis-server), then request classification, the stream relay,
// placement and the cache key.
var goBenchCommands = [][]string{
	{"test", "-run", "xxx", "-bench", "BenchmarkAdmit", "-benchtime", "20000x", "./ratelimit"},
	{"test", "-run", "xxx", "-bench", ".", "-benchtime", "20000x", "./proxy", "./balancer", "./cache"},
}

// goBenchLine is one result line of go test -bench.
type goBenchLine struct {
	pkg, name                   string
	nsPerOp, bytesPerOp, allocs string
}

// runGoBench runs the hot-path Go benchmarks and reports their cost per
// operation. The output of each command is saved in the run folder.
func runGoBench(ctx context.Context, r *Run) (report.Section, error) {
	var lines []goBenchLine
	var commands []string
	for i, args := range goBenchCommands {
		if err := waitQuiet(ctx, r); err != nil {
			return report.Section{}, err
		}
		cmd := exec.CommandContext(ctx, r.Settings.GoTool, args...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		log := r.Env.Path(fmt.Sprintf("gobench-%d.log", i+1))
		if werr := os.WriteFile(log, append(stdout.Bytes(), stderr.Bytes()...), 0o644); werr != nil {
			return report.Section{}, fmt.Errorf("save go test output: %w", werr)
		}
		if err != nil {
			return report.Section{}, fmt.Errorf("go %s: %w (output in %s)", strings.Join(args, " "), err, log)
		}
		lines = append(lines, parseGoBench(stdout.String())...)
		commands = append(commands, "`go "+strings.Join(args, " ")+"`")
	}
	t := report.Table{
		Title:  "Cost per operation",
		Header: []string{"package", "benchmark", "ns/op", "B/op", "allocs/op"},
	}
	for _, l := range lines {
		t.Rows = append(t.Rows, []string{l.pkg, l.name, l.nsPerOp, l.bytesPerOp, l.allocs})
	}
	return report.Section{
		Title: "Limit check cost and hot-path Go benchmarks",
		Intro: "The runner runs " + strings.Join(commands, " and ") + " from the " +
			"repository root, with the Go toolchain listed above, after the load " +
			"scenarios. BenchmarkAdmitLocal is one admission and its settlement of an " +
			"API key with every limit set, against the in-process limiter; " +
			"BenchmarkAdmitRedis is the same against a redis-server on 127.0.0.1 that " +
			"the benchmark starts, so its time includes the round trips over loopback. " +
			"The other rows are request classification (BenchmarkClassifyInspect), one " +
			"streamed line through the relay (BenchmarkRelayLine), a slot taken and " +
			"given back on the balancer (BenchmarkAcquireRelease) and the cache key " +
			"of a request (BenchmarkKey).\n",
		Tables: []report.Table{t},
	}, nil
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
