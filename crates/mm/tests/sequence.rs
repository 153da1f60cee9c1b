//! The chat sequence, token by token: block order, markers, placeholders, loss targets,
//! truncation and padding.

mod common;

use beatlab_heartcare::instruct::Modality;
use beatlab_mm::{
    Block, BlockContent, ChatTokens, MmError, Row, Splice, block_order, collate, layout_row,
};
use candle_core::Device;

fn embeds(modality: Modality, first_row: usize, len: usize) -> Block {
    Block {
        modality,
        content: BlockContent::Embeds { first_row, len },
    }
}

#[test]
fn one_ecg_as_image_and_signal_is_laid_out_as_the_paper() {
    let tok = common::tokenizer();
    let chat = ChatTokens::from_tokenizer(&tok);
    let question = tok.encode("What does this ECG show?").unwrap();
    let answer = tok.encode("Sinus rhythm.").unwrap();
    // Image block: 2 projected tokens at table rows 5..7; signal block: 3 at rows 0..3.
    let blocks = [
        embeds(Modality::Image, 5, 2),
        embeds(Modality::Signal, 0, 3),
    ];
    let row = layout_row(&chat, &blocks, &question, Some(&answer), 64, "test").unwrap();

    // The whole row, read back as text: every marker and placeholder in its place.
    assert_eq!(
        tok.decode(&row.ids, false).unwrap(),
        "<image_start><pad><pad><image_end><signal_start><pad><pad><pad><signal_end>\
         <|user|>What does this ECG show?<|assistant|>Sinus rhythm.<|end|>"
    );
    // And id by id.
    let mut expected = vec![chat.image_start, chat.pad, chat.pad, chat.image_end];
    expected.extend([
        chat.signal_start,
        chat.pad,
        chat.pad,
        chat.pad,
        chat.signal_end,
    ]);
    expected.push(chat.user);
    expected.extend(&question);
    expected.push(chat.assistant);
    let answer_start = expected.len();
    expected.extend(&answer);
    expected.push(chat.end);
    assert_eq!(row.ids, expected);

    assert_eq!(
        row.splices,
        vec![
            Splice {
                position: 1,
                first_row: 5,
                len: 2
            },
            Splice {
                position: 5,
                first_row: 0,
                len: 3
            },
        ]
    );
    assert_eq!(row.prompt_len, answer_start);
    assert_eq!(row.targets, answer_start..expected.len());
    assert_eq!((row.question_dropped, row.answer_dropped), (0, 0));
}

#[test]
fn code_tokens_sit_between_the_signal_markers() {
    let tok = common::tokenizer();
    let chat = ChatTokens::from_tokenizer(&tok);
    let blocks = [Block {
        modality: Modality::Signal,
        content: BlockContent::Tokens(vec![400, 401, 402]),
    }];
    let row = layout_row(&chat, &blocks, &[10], Some(&[20, 21]), 32, "codes").unwrap();
    assert_eq!(
        row.ids,
        vec![
            chat.signal_start,
            400,
            401,
            402,
            chat.signal_end,
            chat.user,
            10,
            chat.assistant,
            20,
            21,
            chat.end
        ]
    );
    assert!(row.splices.is_empty());
    assert_eq!(row.targets, 8..11);
}

#[test]
fn a_prompt_row_ends_at_the_assistant_marker() {
    let tok = common::tokenizer();
    let chat = ChatTokens::from_tokenizer(&tok);
    let blocks = [embeds(Modality::Signal, 0, 2)];
    let row = layout_row(&chat, &blocks, &[10, 11], None, 32, "prompt").unwrap();
    let expected = vec![
        chat.signal_start,
        chat.pad,
        chat.pad,
        chat.signal_end,
        chat.user,
        10,
        11,
        chat.assistant,
    ];
    assert_eq!(row.ids, expected);
    assert_eq!(row.targets, 8..8);
    assert_eq!(row.prompt_len, 8);
}

/// Lays out a row with a 3-token signal block (5 positions), user/assistant markers (2),
/// question `[10..16)` (6 tokens) and answer `[20..24)` (4 tokens + `<|end|>`): 18 positions
/// untruncated. Checks the kept question and answer tokens and whether `<|end|>` survived.
fn check_truncation(max_seq_len: usize, question: &[u32], answer: &[u32], end: bool) {
    let tok = common::tokenizer();
    let chat = ChatTokens::from_tokenizer(&tok);
    let q: Vec<u32> = (10..16).collect();
    let a: Vec<u32> = (20..24).collect();
    let blocks = [embeds(Modality::Signal, 0, 3)];
    let row = layout_row(&chat, &blocks, &q, Some(&a), max_seq_len, "trunc").unwrap();
    let mut expected = vec![
        chat.signal_start,
        chat.pad,
        chat.pad,
        chat.pad,
        chat.signal_end,
    ];
    expected.push(chat.user);
    expected.extend(question);
    expected.push(chat.assistant);
    expected.extend(answer);
    if end {
        expected.push(chat.end);
    }
    assert_eq!(row.ids, expected, "max_seq_len {max_seq_len}");
    assert!(row.ids.len() <= max_seq_len);
    assert_eq!(row.question_dropped, q.len() - question.len());
    assert_eq!(
        row.answer_dropped,
        a.len() + 1 - answer.len() - usize::from(end)
    );
    assert_eq!(row.targets.len(), answer.len() + usize::from(end));
}

#[test]
fn truncation_cuts_the_question_start_then_the_answer_end() {
    check_truncation(18, &[10, 11, 12, 13, 14, 15], &[20, 21, 22, 23], true);
    check_truncation(40, &[10, 11, 12, 13, 14, 15], &[20, 21, 22, 23], true);
    check_truncation(16, &[12, 13, 14, 15], &[20, 21, 22, 23], true);
    check_truncation(12, &[], &[20, 21, 22, 23], true);
    // No question left: the answer loses `<|end|>`, then its last tokens.
    check_truncation(11, &[], &[20, 21, 22, 23], false);
    check_truncation(9, &[], &[20, 21], false);
    check_truncation(8, &[], &[20], false);
}

#[test]
fn a_row_without_room_for_one_answer_token_is_an_error() {
    let tok = common::tokenizer();
    let chat = ChatTokens::from_tokenizer(&tok);
    let blocks = [embeds(Modality::Signal, 0, 3)];
    match layout_row(&chat, &blocks, &[10], Some(&[20]), 7, "item `x`") {
        Err(MmError::TooLong {
            item,
            needed,
            max_seq_len,
        }) => {
            assert_eq!((item.as_str(), needed, max_seq_len), ("item `x`", 7, 7));
        }
        other => panic!("expected TooLong, got {other:?}"),
    }
}

fn check_order(files: &[(&str, Modality)], expected: &[usize]) {
    let item = common::item("order", "q", "a", files);
    assert_eq!(block_order(&item, 0).unwrap(), expected, "{files:?}");
}

#[test]
fn ecgs_keep_their_order_and_show_the_image_first() {
    use Modality::{Image as I, Signal as S};
    check_order(&[("a", S)], &[0]);
    // The builder's "signal and image" item: one ECG, image block first.
    check_order(&[("a", S), ("a", I)], &[1, 0]);
    // Comparison: ECG a then ECG b, whatever their modalities.
    check_order(&[("a", S), ("b", I)], &[0, 1]);
    check_order(&[("a", I), ("b", S)], &[0, 1]);
    check_order(&[("a", S), ("b", S), ("b", I)], &[0, 2, 1]);
    // The same record compared with itself later is a separate ECG.
    check_order(&[("a", S), ("b", S), ("a", I)], &[0, 1, 2]);

    let mut item = common::item("bad", "q", "a", &[("a", S), ("b", S)]);
    item.filename.pop();
    match block_order(&item, 3) {
        Err(MmError::Item { item, reason }) => {
            assert_eq!(item, "item `bad`");
            assert!(
                reason.contains("1 file names but 2 modality labels"),
                "{reason}"
            );
        }
        other => panic!("expected an item error, got {other:?}"),
    }
}

#[test]
fn collate_right_pads_and_maps_spliced_positions_to_table_rows() {
    let rows = [
        Row {
            ids: vec![1, 0, 0, 2, 7, 8],
            splices: vec![Splice {
                position: 1,
                first_row: 0,
                len: 2,
            }],
            targets: 4..6,
            prompt_len: 4,
            question_dropped: 0,
            answer_dropped: 0,
        },
        Row {
            ids: vec![1, 0, 2, 9],
            splices: vec![Splice {
                position: 1,
                first_row: 2,
                len: 1,
            }],
            targets: 3..4,
            prompt_len: 3,
            question_dropped: 0,
            answer_dropped: 0,
        },
    ];
    let batch = collate(&rows, 0, &Device::Cpu).unwrap();
    assert_eq!(batch.seq_len, 6);
    assert_eq!(batch.lengths, vec![6, 4]);
    assert_eq!(batch.table_rows, 3);
    assert_eq!(
        batch.ids.to_vec2::<u32>().unwrap(),
        vec![vec![1, 0, 0, 2, 7, 8], vec![1, 0, 2, 9, 0, 0]]
    );
    assert_eq!(
        batch.attention_mask.to_vec2::<u8>().unwrap(),
        vec![vec![1, 1, 1, 1, 1, 1], vec![1, 1, 1, 1, 0, 0]]
    );
    assert_eq!(
        batch.target_mask.to_vec2::<f32>().unwrap(),
        vec![
            vec![0.0, 0.0, 0.0, 0.0, 1.0, 1.0],
            vec![0.0, 0.0, 0.0, 1.0, 0.0, 0.0]
        ]
    );
    assert_eq!(
        batch.splice_index.unwrap().to_vec1::<u32>().unwrap(),
        vec![0, 1, 2, 0, 0, 0, 0, 3, 0, 0, 0, 0]
    );
    let keep: Vec<f32> = batch
        .token_keep
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(
        keep,
        vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    );
    assert!(matches!(
        collate(&[], 0, &Device::Cpu),
        Err(MmError::EmptyBatch)
    ));
}
