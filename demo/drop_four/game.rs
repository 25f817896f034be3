//! The rules of drop four (Connect Four), as pure functions over a board: no I/O, no clock.

use serde::Serialize;

/// Rows of the board (row 0 is the top).
pub const ROWS: usize = 6;
/// Columns of the board.
pub const COLUMNS: usize = 7;
/// Discs in a line that win.
const LINE: usize = 4;

/// A player's colour, which is also the colour of their discs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Disc {
    Red,
    Yellow,
}

impl Disc {
    pub fn other(self) -> Disc {
        match self {
            Disc::Red => Disc::Yellow,
            Disc::Yellow => Disc::Red,
        }
    }
}

/// How a finished game ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Win(Disc),
    Draw,
}

/// Why a move was refused; the message is shown to the player as is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MoveError {
    #[error("the game is over; start a new one")]
    GameOver,
    #[error("it is not your turn")]
    NotYourTurn,
    #[error("column {0} does not exist (columns are 0 to 6)")]
    NoSuchColumn(usize),
    #[error("column {0} is full")]
    ColumnFull(usize),
}

/// Cells indexed `[row][column]`, row 0 at the top as the page draws it.
pub type Board = [[Option<Disc>; COLUMNS]; ROWS];

/// One game: the board, whose turn it is and, once over, how it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Game {
    pub board: Board,
    pub turn: Disc,
    pub outcome: Option<Outcome>,
    /// The cells of the winning line, for the page to highlight.
    pub winning_line: Vec<(usize, usize)>,
}

impl Default for Game {
    fn default() -> Self {
        Game { board: [[None; COLUMNS]; ROWS], turn: Disc::Red, outcome: None, winning_line: Vec::new() }
    }
}

impl Game {
    /// Drops `player`'s disc into `column`; returns the row it landed on.
    pub fn play(&mut self, player: Disc, column: usize) -> Result<usize, MoveError> {
        if self.outcome.is_some() {
            return Err(MoveError::GameOver);
        }
        if player != self.turn {
            return Err(MoveError::NotYourTurn);
        }
        if column >= COLUMNS {
            return Err(MoveError::NoSuchColumn(column));
        }
        let row = landing_row(&self.board, column).ok_or(MoveError::ColumnFull(column))?;
        self.board[row][column] = Some(player);
        if let Some(line) = winning_line(&self.board, row, column) {
            self.outcome = Some(Outcome::Win(player));
            self.winning_line = line;
        } else if is_full(&self.board) {
            self.outcome = Some(Outcome::Draw);
        } else {
            self.turn = player.other();
        }
        Ok(row)
    }
}

/// The lowest empty row of `column`, if any.
pub fn landing_row(board: &Board, column: usize) -> Option<usize> {
    (0..ROWS).rev().find(|&row| board[row][column].is_none())
}

/// Whether no move is left.
pub fn is_full(board: &Board) -> bool {
    board[0].iter().all(Option::is_some)
}

/// The line of at least four through the disc at (`row`, `column`), if it completes one. Only
/// lines through the last disc can be new, so this is all a move needs to check.
pub fn winning_line(board: &Board, row: usize, column: usize) -> Option<Vec<(usize, usize)>> {
    let disc = board[row][column]?;
    // Horizontal, vertical, and the two diagonals.
    const DIRECTIONS: [(isize, isize); 4] = [(0, 1), (1, 0), (1, 1), (1, -1)];
    DIRECTIONS.iter().find_map(|&(dr, dc)| {
        let mut line = vec![(row, column)];
        for sign in [1isize, -1] {
            let (mut r, mut c) = (row as isize, column as isize);
            loop {
                r += dr * sign;
                c += dc * sign;
                let inside = (0..ROWS as isize).contains(&r) && (0..COLUMNS as isize).contains(&c);
                if !inside || board[r as usize][c as usize] != Some(disc) {
                    break;
                }
                line.push((r as usize, c as usize));
            }
        }
        (line.len() >= LINE).then(|| {
            line.sort_unstable();
            line
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plays the columns alternately starting with red, panicking on a refused move.
    fn played(columns: &[usize]) -> Game {
        let mut game = Game::default();
        for &column in columns {
            let turn = game.turn;
            game.play(turn, column).unwrap_or_else(|e| panic!("move in column {column}: {e}"));
        }
        game
    }

    #[test]
    fn discs_fall_to_the_lowest_free_row() {
        let mut game = Game::default();
        assert_eq!(game.play(Disc::Red, 3), Ok(5));
        assert_eq!(game.play(Disc::Yellow, 3), Ok(4));
        assert_eq!(game.board[5][3], Some(Disc::Red));
        assert_eq!(game.board[4][3], Some(Disc::Yellow));
    }

    #[test]
    fn four_in_a_row_horizontally_wins() {
        // Red 0,1,2,3 on the bottom row; yellow stacks on top of them.
        let game = played(&[0, 0, 1, 1, 2, 2, 3]);
        assert_eq!(game.outcome, Some(Outcome::Win(Disc::Red)));
        assert_eq!(game.winning_line, vec![(5, 0), (5, 1), (5, 2), (5, 3)]);
    }

    #[test]
    fn four_in_a_column_vertically_wins() {
        let game = played(&[4, 5, 4, 5, 4, 5, 4]);
        assert_eq!(game.outcome, Some(Outcome::Win(Disc::Red)));
        assert_eq!(game.winning_line, vec![(2, 4), (3, 4), (4, 4), (5, 4)]);
    }

    #[test]
    fn a_rising_diagonal_wins() {
        // Red ends on (5,0) (4,1) (3,2) (2,3).
        let game = played(&[0, 1, 1, 2, 2, 3, 2, 3, 3, 6, 3]);
        assert_eq!(game.outcome, Some(Outcome::Win(Disc::Red)));
        assert_eq!(game.winning_line, vec![(2, 3), (3, 2), (4, 1), (5, 0)]);
    }

    #[test]
    fn a_falling_diagonal_wins() {
        // Mirror image of the rising one: red on (5,6) (4,5) (3,4) (2,3).
        let game = played(&[6, 5, 5, 4, 4, 3, 4, 3, 3, 0, 3]);
        assert_eq!(game.outcome, Some(Outcome::Win(Disc::Red)));
        assert_eq!(game.winning_line, vec![(2, 3), (3, 4), (4, 5), (5, 6)]);
    }

    #[test]
    fn yellow_can_win_too() {
        let game = played(&[0, 1, 0, 1, 0, 1, 6, 1]);
        assert_eq!(game.outcome, Some(Outcome::Win(Disc::Yellow)));
    }

    #[test]
    fn three_in_a_row_does_not_win() {
        let game = played(&[0, 0, 1, 1, 2, 2]);
        assert_eq!(game.outcome, None);
        assert_eq!(game.turn, Disc::Red);
    }

    #[test]
    fn a_full_column_is_refused_without_using_the_turn() {
        let mut game = played(&[2, 2, 2, 2, 2, 2]);
        assert_eq!(game.play(Disc::Red, 2), Err(MoveError::ColumnFull(2)));
        assert_eq!(game.turn, Disc::Red);
        assert_eq!(game.play(Disc::Red, 3), Ok(5));
    }

    #[test]
    fn a_move_out_of_turn_is_refused() {
        let mut game = Game::default();
        assert_eq!(game.play(Disc::Yellow, 0), Err(MoveError::NotYourTurn));
        game.play(Disc::Red, 0).unwrap();
        assert_eq!(game.play(Disc::Red, 1), Err(MoveError::NotYourTurn));
        assert_eq!(game.board[5][1], None);
    }

    #[test]
    fn a_column_off_the_board_is_refused() {
        assert_eq!(Game::default().play(Disc::Red, COLUMNS), Err(MoveError::NoSuchColumn(7)));
    }

    #[test]
    fn a_full_board_without_a_line_is_a_draw() {
        // Columns filled in pairs in an order that never lines up four: the classic
        // 0,1 / 2,3 / 4,5 pattern shifted every two rows.
        let order = [
            0, 1, 0, 1, 1, 0, 1, 0, 0, 1, 0, 1, // columns 0 and 1
            2, 3, 2, 3, 3, 2, 3, 2, 2, 3, 2, 3, // columns 2 and 3
            4, 5, 4, 5, 5, 4, 5, 4, 4, 5, 4, 5, // columns 4 and 5
            6, 6, 6, 6, 6, 6,
        ];
        let mut game = Game::default();
        for (i, &column) in order.iter().enumerate() {
            let turn = game.turn;
            game.play(turn, column).unwrap_or_else(|e| panic!("move {i} in column {column}: {e}"));
            if i + 1 < order.len() {
                assert_eq!(game.outcome, None, "game ended early at move {i}");
            }
        }
        assert_eq!(game.outcome, Some(Outcome::Draw));
        assert!(is_full(&game.board));
    }

    #[test]
    fn no_move_is_accepted_after_the_game_ends() {
        let mut game = played(&[0, 0, 1, 1, 2, 2, 3]);
        assert_eq!(game.play(Disc::Yellow, 6), Err(MoveError::GameOver));
    }
}
