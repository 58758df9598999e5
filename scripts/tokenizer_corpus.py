"""Deterministic, varied text for the tokenizer's differential check and benchmark.

Used by scripts/tokenizer-diff and scripts/bench-tokenizer. Natural text comes from files present
on every machine built by scripts/setup (Python's stdlib source, /usr/share licenses, copyright
files and changelogs); the rest is generated from a seed: words in many scripts (with their
combining marks), numbers, JSON, emoji sequences and whitespace oddities.
"""
import glob
import gzip
import json
import random
import sysconfig

SCRIPTS = {
    "latin": ("abcdefghijklmnopqrstuvwxyzäöüßéèêçñøåæœıİſ", ""),
    "greek": ("αβγδεζηθικλμνξοπρστυφχψωάέήίόύώ", ""),
    "cyrillic": ("абвгдеёжзийклмнопрстуфхцчшщъыьэюяіїєґ", ""),
    "armenian": ("աբգդեզէըթժիլխծկհձղճմյնշոչպջռսվտրցւփքօֆ", ""),
    "hebrew": ("אבגדהוזחטיכלמנסעפצקרשת", "\u05b0\u05b4\u05b8\u05bc"),
    "arabic": ("ابتثجحخدذرزسشصضطظعغفقكلمنهوي", "\u064b\u064e\u064f\u0650\u0651\u0652"),
    "devanagari": ("अआइईउऊएऐओऔकखगघचछजझटठडढणतथदधनपफबभमयरलवशषसह", "\u093e\u093f\u0940\u0941\u0942\u0947\u0948\u094b\u094d\u0902"),
    "bengali": ("অআইঈউঊএঐওঔকখগঘচছজঝটঠডঢণতথদধনপফবভমযরলশষসহ", "\u09be\u09bf\u09c0\u09c1\u09cd"),
    "tamil": ("அஆஇஈஉஊஎஏஐஒஓகஙசஞடணதநபமயரலவழளறன", "\u0bbe\u0bbf\u0bc0\u0bc1\u0bcd"),
    "thai": ("กขคฆงจฉชซฌญฎฏฐฑฒณดตถทธนบปผฝพฟภมยรลวศษสหฬอฮ", "\u0e31\u0e34\u0e35\u0e36\u0e37\u0e48\u0e49"),
    "georgian": ("აბგდევზთიკლმნოპჟრსტუფქღყშჩცძწჭხჯჰ", ""),
    "ethiopic": ("ሀለሐመሠረሰሸቀበተቸኀነኘአከኸወዐዘዠየደጀገጠጨጰጸፀፈፐ", ""),
    "hangul": ("".join(chr(c) for c in range(0xAC00, 0xAC00 + 400)), ""),
    "kana": ("あいうえおかきくけこさしすせそたちつてとなにぬねのアイウエオカキクケコサシスセソ", ""),
    "cjk": ("".join(chr(c) for c in range(0x4E00, 0x4E00 + 600)), ""),
}
SEPARATORS = [" ", " ", " ", " ", ", ", ". ", "\n", "\n\n", "  ", "\t", "\r\n", " — ", "! ", "? ", "; ", ": ",
              "\u00a0", "\u3000", "。", "、", "،", "।"]
EMOJI = ["🙂", "😀", "👍", "👍🏽", "👋🏿", "👨‍👩‍👧‍👦", "👩🏽‍💻", "🏳️‍🌈", "🇺🇸", "🇯🇵", "1️⃣", "#️⃣", "❤️", "✨",
         "🧑🏻‍🤝‍🧑🏿", "🫨", "🐈‍⬛", "©️", "™️"]
ODD_SPACE = [" ", "  ", "   ", "\t", "\n", "\r\n", "\r", "\u00a0", "\u2028", "\u2029", "\u0085", "\u3000", "\u200b",
             "\ufeff", "\u202f", "\u2003", "\u000b", "\u000c", "\u001c"]
SPLIT_CASES = ["HelloWorld", "iPhone", "XMLHttpRequest", "HTTPServer", "ABCdef", "a/b/c", "//", "<|endoftext|>",
               "1234567", "²³", "Ⅻ", "١٢٣"]
TRICKY_ALPHABET = list("aAbBsSzZ09 '\t\r\n/.,!?-_\"()") + [
    "ſ", "\u00a0", "\u3000", "\u2028", "\u0085", "\u200b", "\ufeff", "\u0301", "\u0308", "é", "É", "ß", "ǅ", "ʰ", "Ω",
    "ω", "ı", "İ", "²", "Ⅻ", "١", "०", "日", "本", "한", "ا", "ע", "ก", "\u0e31", "🙂", "👍", "🏽", "\u200d", "\ufe0f",
    "\u001c", "’",
]


class CorpusGenerator:
    def __init__(self, seed):
        self.rng = random.Random(seed)

    # -------------------------------------------------------------- local files
    def _take_files(self, paths, budget, reader):
        chunks, size = [], 0
        for path in paths:
            if size >= budget:
                break
            try:
                text = reader(path)
            except (OSError, UnicodeDecodeError, EOFError):
                continue
            chunks.append(text)
            size += len(text.encode())
        return chunks

    @staticmethod
    def _read_text(path):
        with open(path, encoding="utf-8") as f:
            return f.read()

    @staticmethod
    def _read_gz(path):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return f.read()

    def code(self, budget):
        paths = sorted(glob.glob(f"{sysconfig.get_paths()['stdlib']}/**/*.py", recursive=True))
        self.rng.shuffle(paths)
        return self._take_files(paths, budget, self._read_text)

    def prose(self, budget):
        licenses = sorted(glob.glob("/usr/share/common-licenses/*") + glob.glob("/usr/share/doc/*/copyright"))
        changelogs = sorted(glob.glob("/usr/share/doc/*/changelog*.gz"))
        self.rng.shuffle(changelogs)
        return self._take_files(licenses, budget // 2, self._read_text) + self._take_files(changelogs, budget // 2, self._read_gz)

    # -------------------------------------------------------------- generated
    def word(self, script):
        letters, marks = SCRIPTS[script]
        out = []
        for _ in range(self.rng.randint(1, 9)):
            out.append(self.rng.choice(letters))
            if marks and self.rng.random() < 0.4:
                out.append(self.rng.choice(marks))
        text = "".join(out)
        roll = self.rng.random()
        if roll < 0.15:
            return text.capitalize()
        if roll < 0.2:
            return text.upper()
        return text

    def multilingual(self, size):
        parts, total = [], 0
        names = list(SCRIPTS)
        while total < size:
            script = self.rng.choice(names)
            for _ in range(self.rng.randint(3, 30)):
                if self.rng.random() < 0.9:
                    piece = self.word(script)
                else:
                    piece = str(self.rng.randint(0, 10 ** self.rng.randint(1, 8)))
                piece += self.rng.choice(SEPARATORS)
                parts.append(piece)
                total += len(piece.encode())
        return "".join(parts)

    def _json_value(self, depth):
        rng = self.rng
        roll = rng.random()
        if depth > 3 or roll < 0.3:
            return rng.choice([rng.randint(-10**9, 10**9), rng.random() * 1000, True, False, None,
                               self.word(rng.choice(list(SCRIPTS))), "line\nbreak\t\"quoted\" \\ path/to/x"])
        if roll < 0.65:
            return [self._json_value(depth + 1) for _ in range(rng.randint(0, 6))]
        return {self.word("latin") + rng.choice(["", "_id", "Name", "URL", "-x"]): self._json_value(depth + 1)
                for _ in range(rng.randint(0, 6))}

    def json_text(self, size):
        parts, total = [], 0
        while total < size:
            text = json.dumps(self._json_value(0), ensure_ascii=self.rng.random() < 0.3,
                              indent=self.rng.choice([None, None, 1, 2, "\t"]))
            parts.append(text + "\n")
            total += len(text.encode())
        return "".join(parts)

    def emoji_and_space(self, size):
        rng = self.rng
        parts, total = [], 0
        while total < size:
            roll = rng.random()
            if roll < 0.35:
                piece = "".join(rng.choice(EMOJI) for _ in range(rng.randint(1, 5)))
            elif roll < 0.7:
                piece = "".join(rng.choice(ODD_SPACE) for _ in range(rng.randint(1, 6)))
            elif roll < 0.85:
                piece = self.word("latin") + rng.choice(["'s", "'T", "'ll", "'ſ", "'RE", "’s", ""])
            else:
                piece = rng.choice(SPLIT_CASES)
            parts.append(piece)
            total += len(piece.encode())
        return "".join(parts)

    def documents(self, scale=1.0):
        """About 5 MB (at scale 1) of code, prose, many scripts, JSON, emoji and whitespace."""
        def budget(n):
            return int(n * scale)
        return (self.code(budget(1_800_000)) + self.prose(budget(1_200_000))
                + [self.multilingual(budget(1_200_000)), self.json_text(budget(500_000)),
                   self.emoji_and_space(budget(300_000))])

    def tricky_string(self, max_length=64):
        return "".join(self.rng.choice(TRICKY_ALPHABET) for _ in range(self.rng.randint(0, max_length)))

    def ill_formed_utf8(self):
        raw = bytearray()
        for _ in range(self.rng.randint(1, 12)):
            raw += self.rng.choice([b"ab", b" ", "é".encode(), "日本".encode(), "🙂".encode(),
                                    bytes([self.rng.randint(0x80, 0xFF)]), bytes([0xF0, 0x9F]),
                                    bytes([0xED, 0xA0, 0x80]), bytes([0xC0, 0xAF]), b"\r\n"])
        return bytes(raw)

    def random_letters(self, count):
        return "".join(self.rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(count))
