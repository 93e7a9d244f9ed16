package scenario

import (
	"context"
	"testing"

	"github.com/llmproxy/llmproxy/bench/harness"
)

// fakePhase is a phase result with a chosen disturbance.
type fakePhase struct {
	kind   string
	round  int
	others float64
}

func (p fakePhase) disturbance() float64 { return p.others }

func TestInRoundsKeepsLeastDisturbedRound(t *testing.T) {
	r := &Run{Settings: Settings{Rounds: 3, Targets: []string{harness.Direct, harness.LLMProxy}}}
	// others[kind][round]: direct is quietest in round 2, llmproxy in round 3.
	others := map[string][]float64{
		harness.Direct:   {0.5, 0.1, 0.3},
		harness.LLMProxy: {0.4, 0.4, 0.2},
	}
	var order []string
	got, err := inRounds(context.Background(), r, func(kind string) (fakePhase, error) {
		order = append(order, kind)
		return fakePhase{kind: kind, round: r.round, others: others[kind][r.round-1]}, nil
	})
	if err != nil {
		t.Fatalf("inRounds: %v", err)
	}
	if len(order) != 6 || order[0] != harness.Direct || order[1] != harness.LLMProxy {
		t.Errorf("order = %v, want the targets taking turns for 3 rounds", order)
	}
	if got[0].round != 2 {
		t.Errorf("direct kept round %d, want 2", got[0].round)
	}
	if got[1].round != 3 {
		t.Errorf("llmproxy kept round %d, want 3", got[1].round)
	}
}

func TestDefaultSettingsQuickIsSmaller(t *testing.T) {
	full, quick := DefaultSettings(false), DefaultSettings(true)
	if quick.Saturation >= full.Saturation || quick.StreamWindow >= full.StreamWindow {
		t.Error("quick phases are not shorter than full ones")
	}
	if maxLevel(quick.StreamLevels) != 100 {
		t.Errorf("quick stream levels = %v, want 100 only", quick.StreamLevels)
	}
	if maxLevel(full.StreamLevels) != 1000 {
		t.Errorf("full stream levels = %v, want up to 1000", full.StreamLevels)
	}
}
