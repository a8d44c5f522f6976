/* cstats: statistics of text files, in C (built with clang and wasi-libc for wasm32-wasi, and
 * natively, by tasks/build.rs), to show a C program gives the same answer on the grid as on
 * the machine it was written on.
 *
 * Args: FILE... Output: one line per file, "lines words bytes fnv1a64", then "total lines
 * words bytes", then "mean word length X.XXXXXX", then the ten most frequent words (ASCII
 * letters, lowercased; ties in byte order), "count word" each. Paths are never printed, so
 * the output does not depend on where the files are. A file that cannot be read: a message
 * on stderr and exit code 2. */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_WORD 64

struct entry {
    char word[MAX_WORD];
    unsigned long count;
};

static struct entry *table;
static size_t table_len, table_cap;

static void count_word(const char *word) {
    for (size_t i = 0; i < table_len; i++) {
        if (strcmp(table[i].word, word) == 0) {
            table[i].count++;
            return;
        }
    }
    if (table_len == table_cap) {
        table_cap = table_cap ? table_cap * 2 : 256;
        table = realloc(table, table_cap * sizeof *table);
        if (!table) {
            fputs("cstats: out of memory\n", stderr);
            exit(2);
        }
    }
    strcpy(table[table_len].word, word);
    table[table_len].count = 1;
    table_len++;
}

static int by_count_then_word(const void *a, const void *b) {
    const struct entry *x = a, *y = b;
    if (x->count != y->count) return x->count < y->count ? 1 : -1;
    return strcmp(x->word, y->word);
}

int main(int argc, char **argv) {
    unsigned long total_lines = 0, total_words = 0, total_bytes = 0, letters = 0;
    for (int arg = 1; arg < argc; arg++) {
        FILE *file = fopen(argv[arg], "rb");
        if (!file) {
            fprintf(stderr, "cstats: cannot open file %d\n", arg);
            return 2;
        }
        unsigned long lines = 0, words = 0, bytes = 0;
        uint64_t hash = 14695981039346656037ULL;
        char word[MAX_WORD];
        size_t word_len = 0;
        int in_word = 0, c;
        while ((c = fgetc(file)) != EOF) {
            bytes++;
            hash = (hash ^ (uint64_t)(unsigned char)c) * 1099511628211ULL;
            if (c == '\n') lines++;
            int space = c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
            if (!space && !in_word) words++;
            in_word = !space;
            int letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
            if (letter) {
                if (word_len < MAX_WORD - 1) word[word_len++] = (char)(c | 0x20);
                letters++;
            } else if (word_len > 0) {
                word[word_len] = '\0';
                count_word(word);
                word_len = 0;
            }
        }
        if (word_len > 0) {
            word[word_len] = '\0';
            count_word(word);
        }
        fclose(file);
        printf("%lu %lu %lu %016llx\n", lines, words, bytes, (unsigned long long)hash);
        total_lines += lines;
        total_words += words;
        total_bytes += bytes;
    }
    printf("total %lu %lu %lu\n", total_lines, total_words, total_bytes);
    size_t counted = 0;
    for (size_t i = 0; i < table_len; i++) counted += table[i].count;
    printf("mean word length %.6f\n", counted ? (double)letters / (double)counted : 0.0);
    qsort(table, table_len, sizeof *table, by_count_then_word);
    for (size_t i = 0; i < table_len && i < 10; i++) {
        printf("%lu %s\n", table[i].count, table[i].word);
    }
    return 0;
}
