package ollamasim

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
)

func TestGeneratedPiecesTokenizeAlike(t *testing.T) {
	for _, asJSON := range []bool{false, true} {
		for seed := range uint64(50) {
			var text strings.Builder
			var ids []int
			stream := newTokenStream(seed, 5, 60, asJSON)
			for {
				piece, last := stream.next()
				text.WriteString(piece)
				ids = append(ids, tokenID(piece))
				if last {
					break
				}
			}
			// The prompt cache relies on an answer sent back as text
			// tokenizing to the tokens that were generated.
			if got := tokenize(text.String()); !slices.Equal(got, ids) {
				t.Fatalf("seed %d, json %v: %q tokenizes to %d tokens, generated %d",
					seed, asJSON, text.String(), len(got), len(ids))
			}
			if asJSON && !json.Valid([]byte(text.String())) {
				t.Errorf("seed %d: JSON answer is invalid: %q", seed, text.String())
			}
		}
	}
}

func TestSplitPiecesSpecialTokens(t *testing.T) {
	got := splitPieces("<|im_start|>user\nHi there!<|im_end|> <|not a marker|>")
	want := []string{
		"<|im_start|>", "user", "\n", "Hi", " there", "!", "<|im_end|>",
		" ", "<", "|", "not", " a", " marker", "|", ">",
	}
	if !slices.Equal(got, want) {
		t.Errorf("splitPieces = %q, want %q", got, want)
	}
}

func FuzzSplitPieces(f *testing.F) {
	f.Add("<|im_start|>user\nHello, world!<|im_end|>")
	f.Add(" café  naïve\t日本語 ")
	f.Add("<|")
	f.Fuzz(func(t *testing.T, text string) {
		pieces := splitPieces(text)
		if strings.Join(pieces, "") != text {
			t.Fatalf("pieces %q do not join to %q", pieces, text)
		}
		for _, p := range pieces {
			if p == "" {
				t.Fatalf("empty piece in %q", pieces)
			}
		}
		if len(tokenize(text)) != len(pieces) {
			t.Fatalf("tokenize and splitPieces disagree on %q", text)
		}
	})
}

func TestTakeKeepsConversationsApart(t *testing.T) {
	inst := &instance{slots: make([]slot, 2)}
	conversationA := []int{1, 2, 3, 4}
	conversationB := []int{1, 2, 9, 9}

	a := inst.take(conversationA)
	inst.slots[a.slot] = slot{cache: append(conversationA, 5), lastUsed: inst.slots[a.slot].lastUsed}
	inst.active--
	b := inst.take(conversationB)
	if b.slot == a.slot || b.cached != 2 {
		t.Errorf("second conversation took slot %d with %d cached, want the other slot with the shared 2",
			b.slot, b.cached)
	}
	inst.slots[b.slot].busy = false
	inst.active--

	next := inst.take([]int{1, 2, 3, 4, 5, 6})
	if next.slot != a.slot || next.cached != 5 {
		t.Errorf("continuation took slot %d with %d cached, want slot %d with 5", next.slot, next.cached, a.slot)
	}
}
