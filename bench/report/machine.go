package report

import (
	"fmt"
	"maps"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
)

// Machine describes the computer and the software a run measured.
type Machine struct {
	CPUs      int
	CPUModel  string
	MemoryGiB float64
	Kernel    string
	GoVersion string
	// Software lists other programs and their versions, such as nginx.
	Software []string
}

// DescribeMachine reads the machine's description from /proc and runs the
// version command of each program in tools. A program that is missing or
// fails is listed as unavailable.
func DescribeMachine(tools map[string][]string) Machine {
	m := Machine{
		CPUs:      runtime.NumCPU(),
		CPUModel:  procValue("/proc/cpuinfo", "model name"),
		Kernel:    strings.TrimSpace(readFile("/proc/sys/kernel/osrelease")),
		GoVersion: runtime.Version(),
	}
	m.MemoryGiB = memTotalGiB()
	for _, name := range slices.Sorted(maps.Keys(tools)) {
		m.Software = append(m.Software, toolVersion(name, tools[name]))
	}
	return m
}

// Markdown renders m as a list.
func (m Machine) Markdown() string {
	var b strings.Builder
	b.WriteString("Machine:\n\n")
	fmt.Fprintf(&b, "- CPUs (nproc): %d, %s\n", m.CPUs, m.CPUModel)
	fmt.Fprintf(&b, "- memory: %.1f GiB\n", m.MemoryGiB)
	fmt.Fprintf(&b, "- kernel: Linux %s\n", m.Kernel)
	fmt.Fprintf(&b, "- Go: %s\n", m.GoVersion)
	for _, s := range m.Software {
		fmt.Fprintf(&b, "- %s\n", s)
	}
	return b.String()
}

// memTotalGiB returns MemTotal of /proc/meminfo, or 0 when unreadable.
func memTotalGiB() float64 {
	// The value reads "24576000 kB".
	fields := strings.Fields(procValue("/proc/meminfo", "MemTotal"))
	if len(fields) == 0 {
		return 0
	}
	kb, err := strconv.ParseFloat(fields[0], 64)
	if err != nil {
		return 0
	}
	return kb / (1 << 20)
}

// procValue returns the value of the first "key: value" line of a /proc
// file, or "unknown".
func procValue(path, key string) string {
	for line := range strings.Lines(readFile(path)) {
		k, v, ok := strings.Cut(line, ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

func readFile(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return string(data)
}

// toolVersion runs a version command and returns "name: first line".
func toolVersion(name string, cmd []string) string {
	out, err := exec.Command(cmd[0], cmd[1:]...).CombinedOutput()
	first, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	if err != nil {
		return fmt.Sprintf("%s: unavailable (%v)", name, err)
	}
	return fmt.Sprintf("%s: %s", name, first)
}
